"""Keep freed memory inside the process while meta-training and meta-testing the LSTM.

Every truncation's backward frees what autograd saved for it (16.5 MiB per optimizee step of
the paper's MLP, ≈ 330 MiB for a truncation of 20), in blocks of a few MiB. glibc's malloc
hands blocks above its mmap threshold back to the OS when they are freed, and trims the top of
its heap, so the next truncation faults the same pages in again, each one zeroed by the
kernel: 600-900 page faults and ~1.5 ms per optimizee step of ~16 ms on the benchmark
(``benchmarks/bench_meta.py``). Told to keep them, malloc reuses the same pages: no fault,
and the process's memory stays at its peak instead of shrinking between truncations. A
meta-test step of the LSTM (:class:`~l2o_lightning.optim.L2O`) frees its own few MiB each
step alike (~400 faults, ~0.8 ms of ~7 ms).
"""

from __future__ import annotations

import ctypes
from functools import cache

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest glibc accepts on 64-bit systems
NEVER_TRIM = 2**31 - 1


@cache
def keep_freed_memory() -> bool:
    """Make this process's glibc malloc keep freed memory for reuse: blocks up to 32 MiB come
    from its heap (``M_MMAP_THRESHOLD``), and the heap is not trimmed (``M_TRIM_THRESHOLD``).
    Once per process; ``False`` where the C library is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
