"""Benchmarks for fanout-ingest: local servers, peer implementations, the runner.

Run ``python -m benchmarks.run`` (see ``benchmarks/README.md``).
"""
