"""Reading and writing what other tools open: QUINT series (QuickNII, VisuAlign, DeepSlice, PyNutil) and CSV.

Modules load on first use: :mod:`siibra_anchor.io.quint`, :mod:`siibra_anchor.io.tables`.
"""
