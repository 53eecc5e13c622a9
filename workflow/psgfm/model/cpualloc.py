"""Keep freed memory in the process on CPU runs (glibc ``mallopt``), so steps stop page-faulting.

The fused encoder tokenises one large batch of patches per step (9,600 patches for batch 16
on mixed montages); each activation is tens of MB. glibc's default ``malloc`` serves blocks
that large with ``mmap`` and returns them to the OS with ``munmap`` when they are freed, so
every step maps and page-faults its activations in again: per-patch tokenizer cost rose from
about 135 µs at 2,400 patches to about 200 µs at 9,600 (forward + backward, 1 thread).
:func:`keep_freed_memory` sets three ``mallopt`` parameters so large blocks come from the heap
and freed memory stays there for the next step:

- ``M_MMAP_MAX = 0``: never serve an allocation by its own ``mmap``;
- ``M_TRIM_THRESHOLD = 1 GiB``: do not give the top of the heap back below 1 GiB free;
- ``M_TOP_PAD = 64 MiB``: grow the heap in 64 MiB steps.

Trade-off: the peak resident memory is unchanged, but the process keeps it (RSS stays at
its peak instead of falling between steps). Called once by the CPU pretrain and embed entry
points; ``PSGFM_MALLOC=default`` in the environment opts out. A no-op (returns False) off
Linux/glibc (musl, macOS, Windows). docs/model.md, 'CPU memory allocator'.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
ENV_VAR = "PSGFM_MALLOC"


def glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (it exports ``gnu_get_libc_version``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory(environ=None) -> bool:
    """Apply the allocator setting above to this process; True when it took effect.

    False (nothing changed) off glibc or when ``PSGFM_MALLOC=default`` is set. Safe to call
    more than once; the setting lasts for the process and is inherited by forked workers.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "").strip().lower() == "default":
        return False
    libc = glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    if ok:
        log.debug("glibc malloc keeps freed memory (M_MMAP_MAX=0, trim 1 GiB, top pad 64 MiB)")
    return ok
