"""Evaluation on the public API: real-anatomy volumes and their truth, and the real-anatomy benchmark tier.

Submodules load lazily (SimpleITK, torch and the volumes are touched only when a function is called):
:mod:`.real_data` (manifest and checked loader), :mod:`.real_truth` (registration truth and its
uncertainty), :mod:`.real_tier` (cutting, anchoring and reporting the tier).
"""
