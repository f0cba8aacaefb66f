"""A return value far larger than any answer: a gigabyte string."""


def has_close_elements(numbers, threshold):
    return "x" * 2**30
