"""Imported by a warm pool's zygote: records each import (pid and time) in
the file named by $WARM_PROBE_LOG, so a test can count them."""
import os
import time

with open(os.environ["WARM_PROBE_LOG"], "a") as f:
    f.write(f"import {os.getpid()} {time.time()}\n")

# About 24 MiB that every worker shares with the zygote (copy-on-write).
DATA = bytes(range(256)) * (96 * 1024)


def pid() -> int:
    return os.getpid()


def touch() -> int:
    """Reads the shared data without writing it."""
    return len(DATA) + DATA[12345]
