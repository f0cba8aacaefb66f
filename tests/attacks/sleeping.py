"""Sleeping past every deadline."""

import time


def has_close_elements(numbers, threshold):
    time.sleep(3600)
