"""Benchmarks of chicory_backends against Chicory 0.1.0's backends and the raw drivers.

``python -m bench`` measures throughput and wire round trips (``bench/results/latest``),
store_result bursts on long-lived and fresh objects (``bursts``) and the real
``chicory worker`` end to end (``e2e``), each ``.md`` and ``.json``;
``python -m bench cleanup`` measures ``cleanup_old_results`` on a large expired table
while results keep being stored.
"""
