"""Benchmarks that print figures (run as ``python -m bench.<name>``); speed is never asserted by tests."""
