"""Benchmarks: ``python -m bench --help``. They print ratios measured in one run (medians)."""
