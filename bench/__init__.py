"""Benchmarks for outbox_worker; run ``python -m bench --help``."""
