"""Benchmarks of the box: frame speed and memory, the hot swap, identification and
verification accuracy on LFW, the trainer's cost. Each module is a ``python -m`` entry
point on ``bench.rig`` and ``bench.common``."""
