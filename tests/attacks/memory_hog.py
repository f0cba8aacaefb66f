"""Taking all the memory there is."""


def has_close_elements(numbers, threshold):
    hog = []
    while True:
        hog.append(bytearray(256 * 2**20))
