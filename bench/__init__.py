"""Benchmarks of the connection node against bare baselines (README.md here;
run with ``make bench`` or ``python -m bench.run``)."""
