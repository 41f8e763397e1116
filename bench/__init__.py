"""Benchmarks of procq against peer process pools; never part of the test run."""
