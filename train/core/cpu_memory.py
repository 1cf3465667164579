"""Training on the CPU: keep the memory a step frees for the next step.

glibc's malloc serves blocks above a threshold (128 KiB, raised on the fly up to 32 MiB)
with fresh pages from the system and returns them when they are freed, and it gives back
the free top of its heap beyond 128 KiB. A training step allocates and frees the same
activations every time, so by default it page-faults them all in again (a large share of a
CPU step's time: bench/results/cpu_notes.md, "Measurements behind the code"). Serving every
block from the heap (no ``mmap``: the threshold cannot be raised past 32 MiB, and a 256^2
feature map of 128 channels is 32 MiB in float32) and raising the trim threshold keeps
freed blocks for the next step; the process's resident memory stays at its peak instead of
shrinking between steps, and a step's page faults drop to none once the heap has grown.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
TRIM_THRESHOLD = 2**31 - 1  # free heap top returned to the system only beyond 2 GiB


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory instead of returning it to the system.

    Process-wide, for allocations made after the call. Returns False (and changes nothing)
    where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process runs on
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # not glibc (musl's mallopt does nothing)
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
