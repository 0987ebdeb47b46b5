"""The process's heap: freed memory kept for the next allocation instead of handed back to the kernel.

A meta-training step allocates and frees the same large tensors again and again (a stack of conv
networks' activations for 100 images is several megabytes per layer). glibc's malloc serves
allocations above its mmap threshold (128 KiB at first, raised as such blocks are freed, at most
32 MiB) with fresh pages from the kernel, and gives the top of its heap back whenever more than
its trim threshold is free. Each fresh page then costs a page fault on first touch, which in a
virtual machine is expensive: with the conv pool, about a third of a step's time went to page faults
(docs/performance.md has the measurement). Where memory comes from never changes what is computed,
so every number stays the same; the process keeps up to :data:`TRIM_THRESHOLD` more memory.

:func:`keep_freed_memory` sets glibc's thresholds once per process (the run's, and so, by fork,
its workers'; a Ray actor sets its own). It leaves the allocator alone where the user chose its
thresholds (``MALLOC_TRIM_THRESHOLD_`` and the like, or their ``GLIBC_TUNABLES``), where the C library is not
glibc (macOS, musl, Windows), and when ``REML_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Free memory at the top of the heap kept for reuse, at most (the rest goes back to the kernel).
TRIM_THRESHOLD = 256 * 2**20
#: Allocations from the heap up to this size: glibc's largest mmap threshold on a 64-bit system.
MMAP_THRESHOLD = 32 * 2**20
#: Set to ``0`` to leave the allocator as the C library configures it.
OPT_OUT = "REML_KEEP_FREED_MEMORY"

#: The allocator settings a user may have chosen (environment variables, and glibc tunables' names).
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
USER_TUNABLES = tuple(f"glibc.malloc.{name}" for name in ("trim_threshold", "mmap_threshold", "top_pad", "mmap_max"))


_applied: bool | None = None


def _user_chose() -> bool:
    """Whether the environment opts out or sets the heap's thresholds itself (the user's choice wins)."""
    if os.environ.get(OPT_OUT, "").strip().lower() in {"0", "false", "no", "off"}:
        return True
    if any(name in os.environ for name in USER_SETTINGS):
        return True
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in tunables for name in USER_TUNABLES)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (see the module's docstring); idempotent.

    Returns whether the thresholds are set (False where it leaves the allocator alone).
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if _user_chose() or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success; setting either threshold also ends glibc's own adjustment of both
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
