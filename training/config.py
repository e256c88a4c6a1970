"""Training configuration: a pydantic model, loaded from YAML or JSON, with ``key=value`` overrides.

Unknown keys are errors (a typo must not silently fall back to a default). Every field has a default, so
a config file only lists what differs. Volumes are named by the keys of
:data:`siibra_anchor.templates.VOLUMES` (so a config works wherever the package is installed) or by paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import TrainConfigError, TrainingFileNotFoundError
from .synth import SynthParams

__all__ = [
    "PatchConfig",
    "EncoderConfig",
    "AugmentConfig",
    "ValConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
]


PlaneName = Literal["coronal", "sagittal", "axial"]


def _all_planes() -> list[PlaneName]:
    return ["coronal", "sagittal", "axial"]


def _coronal() -> list[PlaneName]:
    return ["coronal"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PatchConfig(_Strict):
    """Working pixel spacing (mm/px), patch side (px), min tissue fraction of a patch window."""

    spacing_mm: float = Field(default=1.5, gt=0)
    size_px: int = Field(default=32, ge=8)
    min_tissue: float = Field(default=0.35, ge=0, le=1)


class EncoderConfig(_Strict):
    """Encoder to train: ``arch`` of :func:`siibra_anchor.encoders.build_encoder` (``"patch-cnn"``), width
    (channels of the first stage), embedding dimension, and ``options``: further keyword arguments of the
    encoder class (passed through unchanged, e.g. options an architecture gains later)."""

    arch: str = "patch-cnn"
    width: int = Field(default=32, ge=1)
    dim: int = Field(default=128, ge=2)
    options: dict[str, Any] = Field(default_factory=dict)


class AugmentConfig(_Strict):
    """Probability of each augmentation block (see :func:`siibra_anchor.training.augment.default_pipeline`)."""

    rotate: float = Field(default=0.25, ge=0, le=1)
    elastic: float = Field(default=0.3, ge=0, le=1)
    tissue_crop: float = Field(default=0.15, ge=0, le=1)
    tears: float = Field(default=0.15, ge=0, le=1)
    remap: float = Field(default=0.5, ge=0, le=1)
    invert: float = Field(default=0.25, ge=0, le=1)
    gamma: float = Field(default=0.5, ge=0, le=1)
    blur: float = Field(default=0.25, ge=0, le=1)
    resolution: float = Field(default=0.25, ge=0, le=1)
    noise: float = Field(default=0.4, ge=0, le=1)


class ValConfig(_Strict):
    """Validation: top-1 nearest-neighbour 3D error of query patches against a reference patch set.

    The reference is cut from ``reference`` along ``axes`` every ``ref_step_mm`` (grid stride
    ``ref_stride_px``); queries (``n_queries`` per volume) come from planes of *other* volumes/contrasts
    (``queries``) tilted up to ``tilt_deg``. ``every`` steps (0: only at the end).
    """

    enabled: bool = True
    every: int = Field(default=0, ge=0)
    reference: str = "mni152"
    queries: list[str] = Field(default_factory=lambda: ["mni152-2009a-gm", "fsl-mni152-t1"])
    axes: list[PlaneName] = Field(default_factory=_coronal)
    ref_step_mm: float = Field(default=4.0, gt=0)
    ref_stride_px: int = Field(default=3, ge=1)
    n_queries: int = Field(default=300, ge=1)
    tilt_deg: float = Field(default=10.0, ge=0, le=90)
    inplane_rotation_deg: float = Field(default=0.0, ge=0, le=180)
    seed: int = 12345
    batch_size: int = Field(default=1024, ge=1)


class SynthConfig(_Strict):
    """Domain randomisation (:mod:`siibra_anchor.training.synth`): ``n`` synthetic brains rendered from
    ``source`` join the training volumes, ``n`` new ones every ``every`` steps (``n: 0``: off)."""

    n: int = Field(default=0, ge=0)
    every: int = Field(default=50, ge=1)
    source: str = "mni152"
    #: processes that render the next window's brains while the current one trains (0: render in the
    #: training process when a window starts); the renderings are the same either way
    workers: int = Field(default=0, ge=0)
    # how far a rendering strays: defaults and meaning are those of synth.SynthParams
    deform_mm: float = Field(default=SynthParams.deform_mm, ge=0)
    control_mm: float = Field(default=SynthParams.control_mm, gt=0)
    parcels: int = Field(default=SynthParams.parcels, ge=1)
    parcel_std: float = Field(default=SynthParams.parcel_std, ge=0)
    bias: float = Field(default=SynthParams.bias, ge=0)
    texture: float = Field(default=SynthParams.texture, ge=0)
    blur_mm: float = Field(default=SynthParams.blur_mm, ge=0)
    noise: float = Field(default=SynthParams.noise, ge=0)
    epi: float = Field(default=SynthParams.epi, ge=0, le=1)
    epi_shift_mm: float = Field(default=SynthParams.epi_shift_mm, ge=0)
    epi_voxel_mm: float = Field(default=SynthParams.epi_voxel_mm, ge=0)


class TrainConfig(_Strict):
    """Everything a training run depends on (the seed included): same config, same run on CPU.

    Data: planes cut from ``volumes`` and, when ``patch_stores`` (zarr stores written by
    :func:`~siibra_anchor.training.datasets.write_patch_store`, e.g. patches of registered histology) are
    given, ``store_fraction`` of every batch from one of the stores (all of it without volumes).
    """

    # data
    volumes: list[str] = Field(default_factory=lambda: ["mni152", "mni152-2009a-t1", "mni152-2009a-wm"])
    volumes_npz: str | None = None
    patch_stores: list[str] = Field(default_factory=list)
    store_fraction: float = Field(default=0.5, ge=0, le=1)
    patch: PatchConfig = PatchConfig()  # pydantic copies model defaults per instance
    orientation: Literal["canonical", "random"] = "canonical"
    planes: list[PlaneName] = Field(default_factory=_all_planes, min_length=1)
    tilt_deg: float = Field(default=20.0, ge=0, le=90)
    inplane_rotation_deg: float = Field(default=180.0, ge=0, le=180)
    mirror_prob: float = Field(default=0.5, ge=0, le=1)
    #: each plane is cut with pixels (1 + u) times the working spacing, u uniform in +-scale_jitter: a
    #: section's stated pixel size is often off by 10-20% (shrinkage, wrong metadata)
    scale_jitter: float = Field(default=0.0, ge=0, lt=0.5)
    mix_volumes: bool = True
    #: synthetic brains of random contrast and anatomy beside ``volumes`` (off unless ``synth.n`` > 0)
    synth: SynthConfig = SynthConfig()
    batch_size: int = Field(default=256, ge=2)
    groups: int = Field(default=8, ge=0)
    planes_per_group: int = Field(default=2, ge=1)
    group_radius_mm: float = Field(default=15.0, gt=0)
    far_fraction: float = Field(default=0.25, ge=0, le=1)
    far_per_plane: int = Field(default=16, ge=1)
    views: int = Field(default=2, ge=1, le=2)
    augment: AugmentConfig = AugmentConfig()
    # loss
    loss: Literal["spatial", "infonce"] = "spatial"
    sigma_mm: float = Field(default=8.0, gt=0)
    temperature: float = Field(default=0.1, gt=0)
    max_distance_sigmas: float | None = Field(default=3.0, gt=0)
    # optimisation
    encoder: EncoderConfig = EncoderConfig()
    #: start from these weights instead of a random init (fine-tuning): a recorded encoder's name (see
    #: ``siibra_anchor.encoders.shipped_encoders()``; from a clone also ``lineage_encoders()``) or the path of
    #: an ``encoder.pt``/checkpoint; they must fit
    #: ``encoder``. Ignored on ``--resume`` from a checkpoint of this run.
    init_weights: str | None = None
    lr: float = Field(default=2e-3, gt=0)
    min_lr_ratio: float = Field(default=0.02, ge=0, le=1)
    warmup_steps: int = Field(default=50, ge=0)
    steps: int = Field(default=500, ge=1)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    seed: int = 0
    time_limit_s: float | None = Field(default=None, gt=0)
    # evaluation, output, runtime
    val: ValConfig = ValConfig()
    log_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    out_dir: str = "runs/train"
    amp: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ddp_backend: Literal["auto", "nccl", "gloo"] = "auto"
    num_workers: int = Field(default=0, ge=0)
    threads: int | None = Field(default=None, ge=1)
    progress: bool = True

    @field_validator("volumes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"volumes must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if not self.volumes and not self.patch_stores:
            raise ValueError("give training data: volumes (keys or NIfTI paths) and/or patch_stores (zarr)")
        if self.loss == "infonce" and self.views != 2:
            raise ValueError("loss 'infonce' needs views: 2 (two augmented views of each patch)")
        if self.synth.workers and self.num_workers:
            raise ValueError(
                "synth.workers (rendering processes) and num_workers (DataLoader processes) exclude each other: "
                "set one of them to 0"
            )
        return self

    @property
    def context_px(self) -> int:
        """Side of the sampled patches: larger than the patch when it is rotated/warped and then cropped."""
        if self.augment.rotate > 0 or self.augment.elastic > 0:
            return int(math.ceil(self.patch.size_px * math.sqrt(2))) + 2
        return self.patch.size_px

    def encoder_config(self) -> dict[str, Any]:
        """The dict :func:`siibra_anchor.encoders.build_encoder` takes."""
        return {
            "arch": self.encoder.arch,
            "in_channels": 1,
            "width": self.encoder.width,
            "dim": self.encoder.dim,
            "patch_size": self.patch.size_px,
            **self.encoder.options,
        }


def _raise(exc: ValidationError, source: str) -> TrainConfigError:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(config)"
        parts.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return TrainConfigError(f"invalid training config {source}: " + "; ".join(parts))


def _parse_text(text: str, suffix: str, source: str) -> Any:
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainConfigError(f"{source} is not valid JSON: {exc}") from exc
    try:
        import yaml
    except ImportError as exc:  # a bare GPU box may lack PyYAML; JSON always works
        raise TrainConfigError(f"reading {source} needs PyYAML (pip install pyyaml) or a .json config") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{source} is not valid YAML: {exc}") from exc


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - without PyYAML (or unparsable) the value stays a string
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b=value`` overrides (value parsed as JSON/YAML, else a string) in a nested config dict."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r} must look like key=value (e.g. steps=100, val.every=50)")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TrainConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value)
    return out


def load_config(
    source: str | Path | dict[str, Any] | TrainConfig | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML/JSON file, a dict or a config, with optional overrides.

    Raises :class:`~siibra_anchor.training.errors.TrainConfigError` naming every invalid field.
    """
    if isinstance(source, TrainConfig):
        data, name = source.model_dump(), "object"
    elif source is None:
        data, name = {}, "defaults"
    elif isinstance(source, dict):
        data, name = dict(source), "dict"
    else:
        p = Path(source)
        if not p.is_file():
            raise TrainingFileNotFoundError(f"training config {p} not found")
        data, name = _parse_text(p.read_text(), p.suffix.lower(), str(p)), str(p)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TrainConfigError(f"{p} must hold a mapping of config keys, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, list(overrides))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise _raise(exc, name) from None
