"""glibc malloc settings for the box's and the aggregator's long-lived processes.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB);
from then on buffers of that size come from the malloc heap, which fragments and is not
given back to the OS when several threads allocate alternately. Both sides handle many
large short-lived buffers (ONNX graphs and activation batches on the box, 256 KB chunks
and ciphertexts at the aggregator), so each process pins its thresholds: buffers above
the mmap threshold are mmapped and returned to the OS when freed, those below come from
the heap and are reused. Measured: a box process after warming the trunk features of 32
crops 616 -> 412 MB; the aggregator at 1M values no longer grows from 264 MB (10 boxes)
to 349 MB (100 boxes).

Pinning the mmap threshold also pins the trim threshold (glibc stops adjusting both),
at 128 KiB unless set: a heap whose free top exceeds it is shrunk at once and its pages
fault in again, zeroed, on the next request. So each policy sets both, and the box one
arena:

- **Box** (``BOX_MALLOC``): a 640x480 camera frame or decoded upload is 900 KB, and a
  frame's work allocates about 3.4 MB of such buffers (the decoded image, its copies,
  YuNet's input). At a 128 KiB threshold every one was a fresh mmap: 825 page faults
  per recognise request, +1.4 ms on the JPEG decode and about +1 ms on the engine
  (issue 17's bench). Mmap threshold 1 MiB, trim threshold 4 MiB (above one frame's
  buffers), and one arena: the HTTP server's worker threads take turns on one engine,
  and with an arena each, every arena kept its own few MB (RSS +20 MB). Measured with
  serve-api, 80 requests: 825 -> 1 fault per request, RSS 212 -> 210 MB;
  ``bench.edge.box_memory`` for the trunk-feature and training stages.
- **Aggregator** (``AGGREGATOR_MALLOC``): every MQTT message it receives (one chunk, at
  most 256 KiB plus its header) passes through several transient buffers of the
  message's size (paho's socket reads and packet decoding). At 128 KiB each of those
  was a fresh mmap, page-faulted, zeroed and unmapped: about 8 pairs per update, most
  of the MQTT thread's kernel time. Below 512 KiB they come from the heap and are
  reused; ciphertexts and sums (MBs) are still mmapped, so RSS stays flat. Measured
  with ``bench.aggregator.fleet_load``, all uploads at once, 2 runs each: 100 boxes of
  the default part, 5 rounds: 3.5 -> 2.6 ms CPU per update, 320-330 -> 405-430 updates
  acked per second.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from dataclasses import dataclass

from federation.chunking import DEFAULT_CHUNK_SIZE

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MiB = 1024 * 1024


@dataclass(frozen=True)
class MallocPolicy:
    mmap_threshold: int  # bytes: larger buffers are mmapped, freed back to the OS
    trim_threshold: int  # bytes of free heap top kept before it is given back
    arenas: int = 0  # 0: glibc's default (8 per core)


BOX_MALLOC = MallocPolicy(mmap_threshold=1 * MiB, trim_threshold=4 * MiB, arenas=1)
# A box's training child once its trunk features are computed: torch's per-step tensors
# (a batch of cut features is about 6 MB) come back from the heap instead of a fresh
# mmap each step; 32 MiB is glibc's own ceiling for the dynamic threshold.
TRAINING_MALLOC = MallocPolicy(mmap_threshold=32 * MiB, trim_threshold=64 * MiB, arenas=1)
AGGREGATOR_MALLOC = MallocPolicy(mmap_threshold=2 * DEFAULT_CHUNK_SIZE,  # above any chunk
                                 trim_threshold=128 * 1024)  # glibc's default


def pin_malloc(policy: MallocPolicy) -> None:
    """Fix glibc's thresholds (no-op where the C library is not glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, policy.mmap_threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, policy.trim_threshold)
        if policy.arenas:
            libc.mallopt(_M_ARENA_MAX, policy.arenas)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    return fn


_MALLOC_TRIM = _load_malloc_trim()


def return_freed_memory() -> None:
    """Give freed buffers back to the OS (the aggregator, after each batch of updates).

    Each update passes through short-lived buffers (chunks, and with the in-process sum
    ~60 MB of blob, ciphertext slices and SEAL objects per 1M values). glibc keeps freed
    blocks in per-thread arenas, and with the delivery thread and the worker allocating
    alternately the arenas fragment:
    measured, peak RSS grew from ~200 MB (2 boxes) to ~440 MB (20 boxes) without this
    call although the live data stays one model.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
