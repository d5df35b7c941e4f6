"""glibc's allocator tuned for a process that makes the same large NumPy temporaries on every request.

A 768×1024 float32 mask is 3 MB, above glibc's mmap threshold (128 kB, raised only as mapped blocks are
freed), so each request mapped, page-faulted in and unmapped its masks again: post-processing three masks
measured 17 ms so, 6.4 ms with those blocks reused from the heap. The service roles call this at start.

The free memory this keeps is small in practice: in a soak with a full LRU (20 requests/s, 2 new images/s, tiny
model) the decoder's heaps held 10-28 MB free in all (malloc_info), and malloc_trim(0) gave back 7 MB of a
430 MB RSS. The decoder's slow climb in that soak was ONNX Runtime's arenas, not this (`Decoding.prepared`).
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below this come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free memory the heap keeps instead of returning it to the system


def reuse_large_blocks() -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to 256 MB of it free; False where the C library is
    not glibc (nothing changes then)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
