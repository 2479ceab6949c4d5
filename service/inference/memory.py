"""Memory a worker freed goes back to the operating system.

glibc serves a large allocation with its own mapping and unmaps it when freed, but after the first
such free it raises that threshold (up to 32 MiB), so the next large decoded images come from the
heap and stay in the worker's RSS after a burst: hundreds of MB after a flood of large uploads.
A fixed threshold keeps large images (a decoded 1.4-megapixel RGB image and up) in mappings that
are returned at once; smaller buffers, model tensors among them, stay on the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


def return_large_blocks_to_the_os() -> bool:
    """Fix glibc's mmap threshold; False (and nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
