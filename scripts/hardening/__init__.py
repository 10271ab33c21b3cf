"""Hardening tools: the bad-input corpus, a subprocess server, load and fault runners, the report.

The tests under `tests/hardening/` import these modules, and each runner also works as a
script (`python -m scripts.hardening.run_load --help` from the repository root).
"""
