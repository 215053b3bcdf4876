"""Benchmarks of the contract: CKKS parameter sets and bytes per value, the cost of
homomorphic encryption against a plaintext baseline, differential privacy and federated
accuracy, and the parsers' fuzzer. Each module is a ``python -m`` entry point on
``bench.rig`` and ``bench.common``."""
