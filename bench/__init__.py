"""Benchmarks of chicory_backends against Chicory 0.1.0's backends and the raw drivers.

``python -m bench`` measures throughput and wire round trips and writes
``bench/results/latest.md`` and ``latest.json``; ``python -m bench cleanup`` measures
``cleanup_old_results`` on a large expired table while results keep being stored.
"""
