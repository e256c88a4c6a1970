"""siibra_anchor.training: spatial contrastive training of the patch encoder.

* :mod:`.datasets` -- patches with 3D centres: planes cut from volumes, registered sections, zarr stores.
* :mod:`.augment` -- augmentation blocks (contrast, resolution, damage, geometry) on torch/numpy batches.
* :mod:`.losses` -- spatial contrastive loss (RBF soft targets on 3D distance) and InfoNCE.
* :mod:`.config` -- the pydantic :class:`TrainConfig` (YAML/JSON).
* :mod:`.trainer` -- :func:`train`: seeded, checkpointed, AMP on CUDA, DDP under ``torchrun``.
* :mod:`.cli` -- :func:`main` behind ``python -m siibra_anchor.training``.
* :mod:`.compare` -- encoders side by side on the benchmark's sections.
* :mod:`.average` -- :func:`average_encoders`: the weight average of encoders of one lineage.

Names load lazily: importing this package imports neither torch nor pydantic.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "TrainConfig": ".config",
    "load_config": ".config",
    "train": ".trainer",
    "main": ".cli",
    "spatial_contrastive_loss": ".losses",
    "info_nce_loss": ".losses",
    "PlanePatchSampler": ".datasets",
    "RegisteredSectionDataset": ".datasets",
    "ZarrPatchDataset": ".datasets",
    "write_patch_store": ".datasets",
    "default_pipeline": ".augment",
    "export_volumes": ".volumes",
    "average_encoders": ".average",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'siibra_anchor.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
