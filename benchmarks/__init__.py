"""Benchmarks run with `dagster-platform bench NAME`; each prints one JSON object last."""
