"""The confidence of a placement: a calibrated probability that it lies within 10 mm of the truth.

A placement is described by a few numbers that the anchoring computes anyway (:data:`FEATURES`); a
logistic model maps them to a probability. The models ship in ``weights/confidence.json``, fitted by
``python -m siibra_anchor.evaluation.calibrate`` on a calibration set of sections that no benchmark tier
uses (the file records how: sections, seeds, volumes, the encoder, the fit's own scores). There are two:
``"volume"`` for references with a template volume (NMI with the template is known) and ``"no-volume"``
for references built from registered sections only (``Reference.from_sections``), which must do without
the NMI features.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from .errors import CorruptFileError, InvalidParameterError

__all__ = ["FEATURES", "TRANSFORMS", "ConfidenceModel", "confidence_model", "feature_vector", "WITHIN_MM"]

#: a placement counts as correct when its mean error over the tissue is at most this (mm)
WITHIN_MM = 10.0

#: every feature a model may use, with what it measures
FEATURES: dict[str, str] = {
    "consistency": "share of coarse patches whose global top-k matches hold one where the placement puts them",
    "inlier_share": "share of section patches whose guided match lies within inlier_mm of the placement",
    "match_similarity": "median cosine similarity of the inlier guided matches",
    "nmi_gain": "NMI with the template on the placement minus its median on planes shifted 15 mm",
    "margin": "NMI gain (or consistency) over the best distinct alternative (> 10 mm away), capped at 0.3 "
    "(enters the model as log10(margin + 0.005))",
    "mirror_margin": "NMI gain over the placement's mirror image across the midline, capped at 0.3 (log10 too)",
    "log_patches": "log10 of the number of section patches",
    "log_area_mm2": "log10 of the tissue area in mm2",
    "log_scale": "|log| of the fitted pixel scale (true / stated spacing)",
    "anisotropy": "ratio of the fitted in-plane scales minus 1",
}

_CAP = 0.3


def _log_margin(v: float) -> float:
    # a close call is what matters: 0.00-0.02 apart, 4 in 10 placements of the calibration set were right;
    # 0.08 and more apart, all of them. A log spreads the small margins a linear model cannot tell apart
    return math.log10(max(v, 0.0) + 0.005)


#: how a feature enters the models (the recorded values stay as measured)
TRANSFORMS = {"margin": _log_margin, "mirror_margin": _log_margin}


def feature_vector(values: dict[str, float], names: tuple[str, ...]) -> np.ndarray:
    """The model inputs of a placement's features ``names`` (a missing or NaN value is an error):
    each value as recorded, the margins through :data:`TRANSFORMS`."""
    out = np.empty(len(names))
    for i, n in enumerate(names):
        v = values.get(n)
        if v is None or not math.isfinite(float(v)):
            raise InvalidParameterError(f"confidence feature {n!r} is missing or not finite ({v!r})")
        out[i] = TRANSFORMS.get(n, float)(float(v))
    return out


def cap(v: float | None) -> float:
    """A margin capped to [0, 0.3] (no alternative at all counts as the cap)."""
    if v is None or not math.isfinite(v):
        return _CAP
    return float(min(max(v, 0.0), _CAP))


def _sigmoid(z: float) -> float:
    return float(1.0 / (1.0 + math.exp(-max(min(z, 40.0), -40.0))))


@dataclass(frozen=True)
class ConfidenceModel:
    """``p = sigmoid(intercept + coef . (x - mean) / scale)`` over the features ``names`` (model inputs:
    :func:`feature_vector`)."""

    kind: str
    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    provenance: dict[str, Any]

    def __call__(self, values: dict[str, float]) -> float:
        """Probability in [0, 1] that the placement with these feature ``values`` is within 10 mm."""
        x = (feature_vector(values, self.names) - np.asarray(self.mean)) / np.asarray(self.scale)
        z = float(self.intercept + np.asarray(self.coef) @ x)
        return _sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": list(self.names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfidenceModel:
        try:
            names = tuple(str(n) for n in d["features"])
            m = cls(
                kind=str(d["kind"]),
                names=names,
                mean=tuple(float(v) for v in d["mean"]),
                scale=tuple(float(v) for v in d["scale"]),
                coef=tuple(float(v) for v in d["coef"]),
                intercept=float(d["intercept"]),
                provenance=dict(d.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"confidence model is malformed ({exc}); reinstall siibra-anchor") from exc
        if not (len(m.mean) == len(m.scale) == len(m.coef) == len(names)) or set(names) - set(FEATURES):
            raise CorruptFileError(f"confidence model {m.kind!r} does not fit its features {names}")
        return m


@lru_cache(maxsize=4)
def confidence_model(kind: str = "volume") -> ConfidenceModel:
    """The shipped model of ``kind`` ("volume" or "no-volume")."""
    if kind not in ("volume", "no-volume"):
        raise InvalidParameterError(f"confidence model kind must be 'volume' or 'no-volume', got {kind!r}")
    try:
        text = resources.files("siibra_anchor").joinpath("weights/confidence.json").read_text()
        models = json.loads(text)["models"]
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptFileError(f"weights/confidence.json is unreadable ({exc}); reinstall siibra-anchor") from exc
    if kind not in models:
        raise CorruptFileError(f"weights/confidence.json has no {kind!r} model; reinstall siibra-anchor")
    return ConfidenceModel.from_dict(models[kind])
