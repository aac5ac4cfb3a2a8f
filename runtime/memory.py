"""Process heap settings for a small-memory device (glibc on Linux; a no-op elsewhere).

Why. glibc serves an allocation above its mmap threshold with its own mapping (given back to the system at free) and
anything smaller from the heap (kept by the process after free unless it lies at the heap's top). The threshold is
dynamic: each freed mapping raises it to that size (up to 32 MiB). After a session load frees its big temporaries, the
KV cache (48 blocks of 4.9 MB for a Pro-1B image) and the VQ decoder's activations (run without ORT's arena, up to 75
MB per tensor) come from the heap, and what they free stays resident: measured on the int4 Pro-1B image, the freed KV
cache (225 MB) was still resident during the VQ decode and the decode's freed tensors piled up: peak RSS 1451 - 2016
MiB in four runs of the same `generate` command (1.52 - 2.11 GB). A fixed threshold (4 MiB) turns the dynamic
behaviour off: those buffers are mapped and unmapped, and the peak is the live memory: 1325 - 1342 MiB in two runs (lm
session + step state ~875 MiB after the loop, the VQ decoder session +245, its run +216). The lm step is not affected
(69.4 vs 69.5 ms median, two A/B runs in both orders): it makes no mmap/munmap call (strace, 200 steps; its buffers
come from ORT's arena or are far below the threshold); the VQ decode faults its fresh pages in (+1 s of system time
per image on 2 cores).

`JANUS_EDGE_MALLOC=default` leaves the C library's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 4 << 20
_done = False


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # glibc, not musl
    except OSError:
        return None


def configure_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (once per process); True when it was set."""
    global _done
    if _done or os.environ.get("JANUS_EDGE_MALLOC") == "default":
        return False
    libc = _libc()
    _done = bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1)
    return _done


def trim_heap() -> None:
    """Give the heap's free pages back to the system (between a request's token loop and its VQ decode)."""
    libc = _libc()
    if libc is not None and os.environ.get("JANUS_EDGE_MALLOC") != "default":
        libc.malloc_trim(0)


# ---- refusing a request larger than the memory there is ---------------------------------------------------------
# A request's KV cache and activations are allocated at its start (the cache once, at its final size): one far larger
# than the memory available would only be ended by the kernel's OOM killer (exit 137, no message; on a Jetson the
# board can freeze first). It is refused up front instead, with the arithmetic of `janus-edge memory` (trt_memory.py).
# JANUS_EDGE_MEMORY_CHECK=0 turns the refusal off (a machine whose swap the user means to use).

def available_bytes() -> int | None:
    """Memory a new allocation can get without swapping: MemAvailable of /proc/meminfo (Linux: free + reclaimable
    page cache), else the free physical pages (sysconf), else None (unknown: no check)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def request_bytes(dims, dtype: str, cache_dtype: str, rows: int, seq: int, length: int, n_images: int) -> int:
    """KV cache (`rows` x `length` slots) + the largest transient of one call (`janus-edge memory`'s estimate)."""
    from .trt_memory import activation_bytes, kv_bytes

    return kv_bytes(dims, rows, length, cache_dtype) + activation_bytes(dims, rows, seq, length, dtype, n_images)


def check_fits(need: int, what: str, backend=None) -> None:
    """InputError when `need` bytes exceed the memory available (the backend's device memory where it has its own,
    `free_memory()`, else the host's)."""
    if os.environ.get("JANUS_EDGE_MEMORY_CHECK", "1") == "0":
        return
    probe = getattr(backend, "free_memory", None)
    avail, where = (probe(), "device memory") if probe is not None else (available_bytes(), "memory")
    if avail is not None and need > avail:
        from janus_edge.errors import InputError

        raise InputError(f"{what} needs ~{_gib(need)} (KV cache + activations) but only {_gib(avail)} of {where} is "
                         f"available; ask for less (JANUS_EDGE_MEMORY_CHECK=0 skips this check)")


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB ({b} bytes)" if b >= 2**30 else f"{b / 2**20:.1f} MiB ({b} bytes)"
