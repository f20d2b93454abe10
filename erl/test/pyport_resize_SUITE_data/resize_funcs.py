"""Functions for pyport_resize_SUITE: each answer names the OS process that gave it."""
import os
import time


def work(seconds, value):
    time.sleep(seconds)
    return [os.getpid(), value]


def forever():
    """A stream that never ends by itself."""
    while True:
        time.sleep(0.05)
        yield 1
