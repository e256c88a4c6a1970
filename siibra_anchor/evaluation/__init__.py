"""How well anchoring works: the section simulator (with histology geometry), patch-level metrics, the
benchmarks (single sections, series, scaling, the real-anatomy tier and its registration truth, the
histology-geometry block), the calibration of the confidence, the reliability report and the baselines.

Uses the library's public names only (a test walks the imports); nothing in the library imports it.
Submodules load lazily (SimpleITK, torch and the volumes are touched only when a function is called).
"""
