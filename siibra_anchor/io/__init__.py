"""Image input and output: section image formats (PNG, TIFF pyramids, NIfTI, OME-Zarr; read lazily,
:mod:`.formats`), folders of sections (:mod:`.folders`), anchored sections written into their space
(:mod:`.apply`), and what other tools open: QUINT series for QuickNII / VisuAlign / DeepSlice / PyNutil
(:mod:`.quint`), CSV tables (:mod:`.tables`), siibra-explorer annotations (:mod:`.explorer`).

Imports core modules only; nothing here touches siibra or the network.
"""
