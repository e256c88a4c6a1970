"""Baselines the benchmark compares the method with (what a user would try instead)."""
