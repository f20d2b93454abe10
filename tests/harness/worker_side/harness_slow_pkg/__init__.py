"""A package whose import is slow and, like asyncio's, breaks for good if an
exception interrupts it half-way: re-imported, `part` is no longer bound
in the new package object (the submodule is already in sys.modules)."""
import time

from .part import VALUE

print("importing harness_slow_pkg", flush=True)
time.sleep(0.3)
DOUBLE = part.VALUE * 2  # noqa: F821 - bound by the submodule import above


def value():
    return DOUBLE
