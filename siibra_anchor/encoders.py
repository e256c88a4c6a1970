"""Patch encoders: any ``torch.nn.Module`` mapping patches ``(N, C, P, P)`` to embeddings ``(N, D)``.

The pipeline only relies on that contract (plus L2 normalisation, which :func:`embed_patches` applies).
Two encoders ship with the package:

* :class:`RawPixelEncoder` -- the documented baseline: the patch, average-pooled and standardised. No
  learning; it is what the method is compared against.
* :class:`PatchEncoder` -- a small CNN trained by spatial contrastive learning (``siibra_anchor.training``),
  loaded from weights shipped in ``siibra_anchor/weights`` with their sha256 and the command that trained
  them (see ``weights/default.json``; :func:`load_default_encoder` loads the default one).

This module imports torch; the package imports it lazily, only when an encoder is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .cache import file_sha256
from .errors import EncoderError, WeightsChecksumError

__all__ = [
    "RawPixelEncoder",
    "PatchEncoder",
    "ClassicalFeatureEncoder",
    "build_encoder",
    "load_default_encoder",
    "shipped_encoders",
    "lineage_encoders",
    "load_encoder",
    "encoder_hash",
    "embed_patches",
    "check_encoder",
]

log = logging.getLogger(__name__)


class RawPixelEncoder(nn.Module):
    """Baseline: average-pool the patch by ``pool`` and standardise it (zero mean, unit norm).

    Input (N, 1, P, P) float in [0, 1]; output (N, (P // pool) ** 2).
    """

    def __init__(self, pool: int = 2) -> None:
        super().__init__()
        self.pool = int(pool)
        self.config: dict[str, Any] = {"arch": "raw-pixel", "pool": self.pool}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        z = x.flatten(1)
        z = z - z.mean(dim=1, keepdim=True)
        return nn.functional.normalize(z, dim=1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.GELU(),
    )


class PatchEncoder(nn.Module):
    """Small CNN for (N, 1, P, P) patches -> (N, dim) L2-normalised embeddings.

    Four conv stages (the first three each followed by 2x average pooling) and a two-layer head on either
    global average + max pooling (``head="pool"``, the default) or the flattened final feature map
    (``head="flatten"``: keeps where in the patch each feature is, which the spatial task needs; the
    final map is ``patch_size / (8 * input_pool)`` pixels square). GroupNorm keeps outputs independent of
    batch composition (embedding a patch alone or in a batch gives the same vector). About 0.3 M
    parameters at width 32.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        dim: int = 128,
        patch_size: int = 32,
        input_pool: int = 1,
        head: str = "pool",
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "arch": "patch-cnn",
            "in_channels": in_channels,
            "width": width,
            "dim": dim,
            "patch_size": patch_size,
        }
        if input_pool != 1:  # keep configs of earlier models unchanged
            self.config["input_pool"] = int(input_pool)
        if head not in ("pool", "flatten"):
            raise EncoderError(f"head must be 'pool' or 'flatten', got {head!r}")
        if head != "pool":
            self.config["head"] = head
        self.input_pool = int(input_pool)
        self.head_kind = head
        w = int(width)
        self.features = nn.Sequential(
            _block(in_channels, w),
            nn.AvgPool2d(2),
            _block(w, 2 * w),
            nn.AvgPool2d(2),
            _block(2 * w, 4 * w),
            nn.AvgPool2d(2),
            _block(4 * w, 4 * w),
        )
        if head == "flatten":
            side = int(patch_size) // (8 * self.input_pool)
            if side < 1 or side * 8 * self.input_pool != int(patch_size):
                raise EncoderError(
                    f"head='flatten' needs patch_size divisible by {8 * self.input_pool}, got {patch_size}"
                )
            n_in = 4 * w * side * side
        else:
            n_in = 8 * w
        self.head = nn.Sequential(nn.Linear(n_in, 4 * w), nn.GELU(), nn.Linear(4 * w, int(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_pool > 1:  # a cheaper encoder: see the patch at half resolution
            x = nn.functional.avg_pool2d(x, self.input_pool)
        f = self.features(x)
        if self.head_kind == "flatten":
            z = f.flatten(1)
        else:
            z = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return nn.functional.normalize(self.head(z), dim=1)


def build_encoder(config: dict[str, Any]) -> nn.Module:
    """Instantiate an encoder from its ``config`` dict (the ``arch`` key picks the class)."""
    if not isinstance(config, dict):
        raise EncoderError(f"encoder config must be a dict with an 'arch' key, got {type(config).__name__}")
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    classes = {"raw-pixel": RawPixelEncoder, "patch-cnn": PatchEncoder, "classical": ClassicalFeatureEncoder}
    if arch in classes:
        try:
            return classes[arch](**cfg)
        except (TypeError, ValueError) as exc:
            raise EncoderError(
                f"bad config for encoder arch {arch!r}: {cfg!r} ({exc}); see weights/default.json"
            ) from exc
    raise EncoderError(f"unknown encoder arch {arch!r}; known: 'raw-pixel', 'patch-cnn', 'classical'")


def load_encoder(weights_path: Any, config: dict[str, Any], sha256: str | None = None) -> nn.Module:
    """Build an encoder from ``config`` and load a state dict with ``torch.load(weights_only=True)``.

    If ``sha256`` is given the file must match it (:class:`WeightsChecksumError` otherwise).
    """
    if sha256 is not None:
        got = file_sha256(weights_path)
        if got != sha256:
            raise WeightsChecksumError(
                f"encoder weights {weights_path} have sha256 {got}, expected {sha256}; "
                "reinstall siibra-anchor or retrain the weights"
            )
    from pathlib import Path

    if not Path(weights_path).is_file():
        from .errors import SectionFileNotFoundError

        raise SectionFileNotFoundError(f"encoder weights not found: {weights_path}; check the path")
    model = build_encoder(config)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a file that is not (or no longer) a checkpoint
        from .errors import CorruptFileError

        raise CorruptFileError(
            f"cannot read encoder weights {weights_path} ({type(exc).__name__}: {exc}); it is not a torch "
            "checkpoint or it is damaged"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise EncoderError(
            f"weights {weights_path} do not fit the encoder config {config!r} ({exc}); pass the config they "
            "were trained with"
        ) from exc
    model.eval()
    return model


def default_manifest() -> dict[str, Any]:
    """The shipped ``weights/default.json``: every released encoder, its file, sha256 and recipe.

    Entries with a ``repo_path`` (the default's training intermediates and superseded models) are kept in
    the git repository only, so that the wheel carries a few MB of weights; see :func:`lineage_encoders`.
    """
    with resources.files("siibra_anchor").joinpath("weights/default.json").open("r") as f:
        return json.load(f)


def shipped_encoders() -> list[str]:
    """Names of the encoders whose weights ship inside the package (the default first)."""
    man = default_manifest()
    names = [k for k, e in man["encoders"].items() if not e.get("repo_path") and k != man["default"]]
    return [man["default"], *names]


def lineage_encoders() -> list[str]:
    """Names of the recorded encoders kept in the git repository only (``training/lineage/``).

    They are the default's training intermediates and superseded models: loadable by name from a clone of
    the repository (or an editable install of one), not from a wheel.
    """
    return [k for k, e in default_manifest()["encoders"].items() if e.get("repo_path")]


#: the repository root when the package runs from a clone (an editable install); lineage weights live there
REPO_ROOT = Path(__file__).resolve().parent.parent


def load_default_encoder(name: str | None = None) -> nn.Module:
    """The package's default encoder (or the recorded encoder ``name``), checked against its sha256.

    An entry without a ``file`` names a weight-free encoder (the raw-pixel baseline). An entry with a
    ``repo_path`` (a lineage encoder, :func:`lineage_encoders`) is read from the repository clone the
    package runs from; installed from a wheel it raises :class:`EncoderError` saying where to get it.
    """
    man = default_manifest()
    key = name or man["default"]
    if key not in man["encoders"]:
        raise EncoderError(
            f"no recorded encoder {key!r}; in the package: {shipped_encoders()}; in the repository: "
            f"{lineage_encoders()}"
        )
    entry = man["encoders"][key]
    if not entry.get("file"):
        model = build_encoder(entry["config"])
        model.eval()
        return model
    if entry.get("repo_path"):
        local = REPO_ROOT / entry["repo_path"]
        if not local.is_file():
            raise EncoderError(
                f"encoder {key!r} (a training intermediate or a superseded model) is kept in the siibra-anchor "
                f"git repository ({entry['repo_path']}, sha256 {entry['sha256']}), not in the installed package (looked in "
                f"{REPO_ROOT}); install siibra-anchor from a clone (pip install -e .) to load it by name, or "
                f"load the file with siibra_anchor.encoders.load_encoder(path, config)"
            )
        return load_encoder(local, entry["config"], sha256=entry.get("sha256"))
    path = resources.files("siibra_anchor").joinpath("weights/" + entry["file"])
    with resources.as_file(path) as p:
        return load_encoder(p, entry["config"], sha256=entry.get("sha256"))


def encoder_hash(model: nn.Module) -> str:
    """Stable short hash of an encoder: its config (or class name) and every parameter/buffer value."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None) or {"class": type(model).__qualname__}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_encoder(model: nn.Module, patch_size: int, in_channels: int = 1) -> int:
    """Run a tiny batch through ``model``; return the embedding size D or raise :class:`EncoderError`."""
    if not isinstance(model, nn.Module):
        raise EncoderError(f"encoder must be a torch.nn.Module, got {type(model).__name__}")
    x = torch.rand(2, in_channels, patch_size, patch_size)
    try:
        with torch.inference_mode():
            y = model.eval()(x)
    except Exception as exc:  # an arbitrary user module may fail in any way
        raise EncoderError(f"encoder failed on a (2, {in_channels}, {patch_size}, {patch_size}) batch: {exc}") from exc
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise EncoderError(f"encoder must map (N, C, P, P) to (N, D); got output {shape}")
    return int(y.shape[1])


#: patches per encoder call on a CPU: 2400 patches took 0.47 s in batches of 512 against 0.57 s in one of 1024
#: and 0.81 s in one of 2400 (2 cores); on a GPU the caller's batch size holds
CPU_BATCH = 512


def embed_patches(model: nn.Module, patches: NDArray, batch_size: int = 2048, device: str | None = None) -> NDArray:
    """Embed patches with ``model``: (N, P, P) or (N, C, P, P) float32 -> (N, D) float32, L2-normalised."""
    x = np.asarray(patches, np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise EncoderError(f"patches must be (N, P, P) or (N, C, P, P), got shape {x.shape}")
    dev = torch.device(device or "cpu")
    if dev.type == "cpu":  # a CPU runs the small CNN fastest on batches that stay in its caches
        batch_size = min(batch_size, CPU_BATCH)
    model = model.to(dev).eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb = torch.from_numpy(x[i : i + batch_size]).to(dev)
            z = model(xb).float()
            outs.append(nn.functional.normalize(z, dim=1).cpu().numpy())
    if not outs:
        d = check_encoder(model, x.shape[-1], x.shape[1])
        return np.zeros((0, d), np.float32)
    return np.concatenate(outs, axis=0)


def embedding_cost_ms(
    model: nn.Module, n: int = 4096, batch_size: int = 2048, repeats: int = 3, seed: int = 0
) -> float:
    """Wall time per patch in ms to embed ``n`` random patches in batches on the CPU (median of ``repeats``).

    The patch size and channels are the model's (``model.config``, default 32 px, 1 channel); the torch
    thread count is whatever the process uses.
    """
    import time

    cfg = getattr(model, "config", {}) or {}
    size = int(cfg.get("patch_size", 32))
    chans = int(cfg.get("in_channels", 1))
    x = np.random.default_rng(seed).random((int(n), chans, size, size), dtype=np.float32)
    embed_patches(model, x[: min(len(x), 64)])  # warm-up (lazy initialisation, allocator)
    times = []
    for _ in range(max(1, int(repeats))):
        t = time.perf_counter()
        embed_patches(model, x, batch_size=batch_size)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000.0 / len(x)


class ClassicalFeatureEncoder(nn.Module):
    """Baseline of classical features: intensity histogram + gradient-magnitude histogram + gradient
    orientation histograms on a 2x2 grid of cells (HOG-like), concatenated and standardised.

    Input (N, 1, P, P) in [0, 1] (background 0); output (N, bins + bins + 4 * orientations).
    """

    def __init__(self, bins: int = 16, orientations: int = 8) -> None:
        super().__init__()
        self.bins, self.orientations = int(bins), int(orientations)
        self.config: dict[str, Any] = {"arch": "classical", "bins": self.bins, "orientations": self.orientations}

    @staticmethod
    def _soft_hist(v: torch.Tensor, w: torch.Tensor, centres: torch.Tensor, width: float) -> torch.Tensor:
        # (N, M) values and weights -> (N, B) triangular-kernel histogram
        k = torch.clamp(1.0 - (v[:, :, None] - centres).abs() / width, min=0.0)
        return (k * w[:, :, None]).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :1]
        n, _, p, _ = x.shape
        gx = torch.zeros_like(x)
        gy = torch.zeros_like(x)
        gx[..., 1:-1] = (x[..., 2:] - x[..., :-2]) / 2
        gy[..., 1:-1, :] = (x[..., 2:, :] - x[..., :-2, :]) / 2
        mag = torch.sqrt(gx**2 + gy**2 + 1e-12)
        tissue = (x > 0).float()
        c_int = torch.linspace(0, 1, self.bins)
        h_int = self._soft_hist(x.flatten(1), tissue.flatten(1), c_int, 1.0 / (self.bins - 1))
        c_mag = torch.linspace(0, 0.5, self.bins)
        h_mag = self._soft_hist(mag.flatten(1).clamp(max=0.5), tissue.flatten(1), c_mag, 0.5 / (self.bins - 1))
        ang = torch.atan2(gy, gx) % np.pi  # unsigned orientation
        c_ang = torch.linspace(0, np.pi, self.orientations + 1)[:-1]
        cells = []
        h = p // 2
        for r0 in (0, h):
            for c0 in (0, h):
                a = ang[..., r0 : r0 + h, c0 : c0 + h].flatten(1)
                w = mag[..., r0 : r0 + h, c0 : c0 + h].flatten(1)
                d = (a[:, :, None] - c_ang).abs()
                d = torch.minimum(d, np.pi - d)
                k = torch.clamp(1.0 - d / (np.pi / self.orientations), min=0.0)
                cells.append((k * w[:, :, None]).sum(1))
        z = torch.cat([h_int / p**2, h_mag / p**2, *cells], dim=1)
        z = z - z.mean(dim=1, keepdim=True)
        return nn.functional.normalize(z, dim=1)
