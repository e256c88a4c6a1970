"""Moved to :mod:`siibra_anchor.evaluation.series_bench` (this path works until the next release)."""

from siibra_anchor._moved import alias

alias(__name__, "siibra_anchor.evaluation.series_bench")
