"""Moved to :mod:`siibra_anchor.evaluation.baselines` (this path works until the next release)."""

import warnings

warnings.warn(
    "siibra_anchor.baselines moved to siibra_anchor.evaluation.baselines; the old path works until the next release",
    DeprecationWarning,
    stacklevel=2,
)
