"""Benchmarks of the service against the raw models and a naive server; run as `python -m bench.<script>`."""
