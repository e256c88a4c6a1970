"""How well anchoring works: the section simulator, patch-level metrics, the benchmarks (single sections,
series, scaling), the reliability report and the baselines they compare with.

Uses the library's public names only (a test walks the imports); nothing in the library imports it.
"""
