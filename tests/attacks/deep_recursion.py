"""Recursing past the C stack."""

import sys

sys.setrecursionlimit(10**7)


def has_close_elements(numbers, threshold):
    return has_close_elements(numbers, threshold)
