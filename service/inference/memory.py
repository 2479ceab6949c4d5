"""Memory a worker freed goes back to the operating system; what it holds from start-up on is not rescanned.

glibc serves a large allocation with its own mapping and unmaps it when freed, but after the first
such free it raises that threshold (up to 32 MiB), so the next large decoded images come from the
heap and stay in the worker's RSS after a burst: hundreds of MB after a flood of large uploads.
A fixed threshold keeps large images (a decoded 1.4-megapixel RGB image and up) in mappings that
are returned at once; smaller buffers, model tensors among them, stay on the heap.

Python's cyclic garbage collector now and then scans every object it tracks; a worker that has imported
TensorFlow, Keras and BentoML and loaded its models tracks about half a million, and that full scan holds
the GIL for about 0.2 s, during which no request moves. Frozen after start-up (`gc.freeze`), those objects
are left out of every scan, and a full collection takes under a millisecond. The cost: cyclic garbage among
them (a start-up model swapped out later) is never collected, once per start-up model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

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


def freeze_start_up_objects() -> int:
    """Collect once, then move every object the worker holds to the collector's permanent generation;
    returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
