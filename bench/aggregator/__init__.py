"""Benchmarks of the aggregator: intake throughput and memory, a fleet of emulated boxes
through a real broker (``fleet_load``, ``fleet_floor``), a round's profile. Each module
is a ``python -m`` entry point on ``bench.rig`` and ``bench.common``."""
