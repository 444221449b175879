"""Benchmarks (not tests): each ``benchmarks/<name>.py`` prints a table and writes results/<name>.json."""
