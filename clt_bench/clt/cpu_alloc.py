"""Keep freed CPU memory in the process so the same big tensors are not re-mapped again and again.

glibc serves allocations above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns them with ``munmap`` on free. A CLT step allocates the same large tensors every step
(per-source decoder gradients [F, T, d], AdamW temporaries, [n, F] activations), so each step
re-maps them and touches every page again: tens of thousands of minor page faults per step at
GPT-2 shape. Every forward of a model allocates its [batch, pos, vocab] logits the same way.
Raising the mmap and trim thresholds keeps those blocks in the heap for reuse: the trainer and
the pipeline's runner set them (on the planted preset the compare stage spent 13 s of 45 s in
the kernel without it, 2 s with it; the baseline 4.6 s of 23 s, 0.9 s with it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # serve blocks up to 1 GB from the heap; do not give back less than 1 GB
_done = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap / trim thresholds once per process; False where there is no glibc."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT)
        )
    except (OSError, AttributeError):  # not glibc (macOS, musl): leave the allocator alone
        ok = False
    _done = ok
    if not ok:
        log.debug("mallopt unavailable: large CPU tensors are re-mapped every step")
    return ok
