"""Benchmarks of the service against its own model and a plain server: `python -m bench.run`."""
