"""Process memory settings shared by the box's and the aggregator's long-lived processes.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB);
from then on buffers of that size come from the malloc heap, which fragments and is not
given back to the OS when several threads allocate alternately. Both sides handle many
large short-lived buffers (ONNX graphs and activation batches on the box, 256 KB chunks
and ciphertexts at the aggregator), so each process pins the threshold at 128 KB: every
such buffer is mmapped and returned to the OS when freed. Measured: a box process after
warming the trunk features of 32 crops 616 -> 412 MB; the aggregator at 1M values no
longer grows from 264 MB (10 boxes) to 349 MB (100 boxes).

The aggregator pins a higher value, AGGREGATOR_MMAP_THRESHOLD_BYTES: every MQTT message
it receives (one chunk, at most 256 KiB plus its header) passes through several
transient buffers of the message's size (paho's socket reads and packet decoding). At
128 KiB each of those was a fresh mmap, page-faulted, zeroed and unmapped: about 8 pairs
per update, most of the MQTT thread's kernel time. Below 512 KiB they come from the heap
and are reused; ciphertexts and sums (MBs) are still mmapped, so RSS stays flat.
Measured with ``bench.aggregator.fleet_load``, all uploads at once, 2 runs each: 100 boxes of the
default part, 5 rounds: 3.5 -> 2.6 ms CPU per update, 320-330 -> 405-430 updates acked
per second, peak RSS 100 vs 10 boxes +0.9%, +0.4%; 1M values, 2 rounds: 0.34 -> 0.25 s
CPU per update, peak RSS 100 vs 10 boxes +21%, +5% (at 128 KiB: +34%, -9%; this
figure is noisy either way: the process tree peaked at 607-843 MB in those runs).
"""

from __future__ import annotations

import contextlib
import ctypes

from federation.chunking import DEFAULT_CHUNK_SIZE

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024
AGGREGATOR_MMAP_THRESHOLD_BYTES = 2 * DEFAULT_CHUNK_SIZE  # above any chunk message


def pin_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> None:
    """Fix glibc's mmap threshold (no-op where the C library is not glibc)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
