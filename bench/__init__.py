"""Benchmarks: ``python -m bench.<area>.<name>`` prints its figures next to a baseline
measured in the same run (``bench.rig.compare``).

``rig/`` (one broker, one emulated box, one aggregator wrapper), ``common/`` (data and
experiments), and the entry points by what they measure: ``edge/``, ``aggregator/``,
``federation/``. Entry points import only ``rig`` and ``common`` of bench
(tests/unit/project/test_bench_layout.py); the product never imports bench.
"""
