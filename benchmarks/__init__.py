"""Benchmarks of the router's hot path, run with ``python -m benchmarks.run``.

Everything runs on 127.0.0.1. Figures are printed, never asserted: speed belongs here, not in
the test suite.
"""
