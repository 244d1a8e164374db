"""Benchmarks and hardware checks (`python -m aegpo.bench.<name>`)."""
