"""A return value nested a hundred thousand deep, and one that contains itself."""

calls = 0


def has_close_elements(numbers, threshold):
    global calls
    calls += 1
    value = []
    for _ in range(100000):
        value = [value]
    if calls > 1:
        value = []
        value.append(value)
    return value
