"""Image input and output: section image formats (PNG, TIFF pyramids, NIfTI, OME-Zarr; read lazily) and
writing anchored sections into their space (:mod:`.apply`).

Imports core modules only; nothing here touches siibra or the network.
"""
