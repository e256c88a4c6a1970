"""Spatial contrastive training of the patch encoder: ``train(config) -> summary dict``.

Reproducibility: every batch and every augmentation draw is seeded by ``(seed, rank, step)`` alone, so a
run is a pure function of its config on CPU (same seed, same loss curve), resuming from a checkpoint
continues exactly where the uninterrupted run would be, and data-loader workers change nothing.

Runs on CPU, on one CUDA GPU (bf16 autocast when ``amp``), or on several processes started by ``torchrun``
(``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment: DDP with NCCL on distinct GPUs, gloo otherwise);
only rank 0 validates and writes files.

Output folder (``out_dir``): ``checkpoints/step-XXXXXXXX.pt`` (model, optimizer, scheduler, step, RNG
states, curves), ``curves.json`` and ``curves.png`` (loss, learning rate, validation error with the
raw-pixel baseline), and at the end ``encoder.pt`` (state dict only, ``torch.load(weights_only=True)``)
with ``encoder.json`` (config for ``build_encoder``, sha256, exact command, git commit, date, final metrics).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from siibra_anchor.cache import atomic_file, file_sha256
from siibra_anchor.encoders import RawPixelEncoder, build_encoder
from siibra_anchor.errors import AnchorError
from siibra_anchor.patches import PatchSpec

from .augment import default_pipeline
from .config import TrainConfig, load_config
from .datasets import PatchBatch, PlanePatchSampler, ZarrPatchDataset
from .errors import TrainConfigError, TrainingError, TrainingFileNotFoundError
from .losses import info_nce_loss, spatial_contrastive_loss
from .synth import SynthParams, SynthVolumes, load_volumes
from .validation import ValidationSet, build_validation_set, evaluate
from .volumes import load_training_volumes

__all__ = ["train", "WarmupCosine", "latest_checkpoint", "step_seed", "plot_curves"]

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^step-(\d{8})\.pt$")


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed derived from (seed, rank, step, stream): independent streams per batch and rank."""
    return int(
        np.random.SeedSequence([int(seed), int(rank), int(step), int(stream)]).generate_state(1, np.uint64)[0] >> 1
    )


class WarmupCosine:
    """Learning rate: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio * base_lr``.

    With a time limit the decay follows ``max(step progress, time progress)`` so a run cut by the clock still
    ends at the low learning rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int, min_ratio: float):
        self.optimizer = optimizer
        self.base_lr, self.warmup, self.total, self.min_ratio = (
            float(base_lr),
            int(warmup),
            int(total),
            float(min_ratio),
        )
        self.step_count = 0
        self.last_lr = 0.0

    def factor(self, step: int, time_frac: float = 0.0) -> float:
        if self.warmup > 0 and step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        prog = min(1.0, max((step - self.warmup) / span, time_frac))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

    def set(self, step: int, time_frac: float = 0.0) -> float:
        """Set the learning rate for ``step`` (0-based) and return it."""
        lr = self.base_lr * self.factor(step, time_frac)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.step_count, self.last_lr = step, lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "last_lr": self.last_lr,
            "base_lr": self.base_lr,
            "warmup": self.warmup,
            "total": self.total,
            "min_ratio": self.min_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count, self.last_lr = int(state["step_count"]), float(state["last_lr"])


# -- distributed -------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("config asks for device 'cuda' but torch sees no CUDA GPU; use device: auto or cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _init_dist(cfg: TrainConfig, device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist  # seconds to import: only when distributed

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    owns = False
    if not dist.is_initialized():
        backend = cfg.ddp_backend
        if backend == "auto":
            # NCCL needs one GPU per rank; several ranks on one GPU (or CPU) go through gloo
            backend = "nccl" if device.type == "cuda" and world <= torch.cuda.device_count() else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    log.info("DDP rank %d/%d (local %d) on %s, backend %s", rank, world, local, device, dist.get_backend())
    return _Dist(rank, world, local, owns)


def _all_mean(x: float, d: _Dist, device: torch.device) -> float:
    if not d.enabled:
        return x
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / d.world


def _broadcast(values: list[float], d: _Dist, device: torch.device) -> list[float]:
    if not d.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device if dist.get_backend() == "nccl" else "cpu")
    dist.broadcast(t, 0)
    return [float(v) for v in t.tolist()]


# -- files -------------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, writer: Any) -> None:
    """Call ``writer(tmp)`` on a temporary file next to ``path``, then rename it into place."""
    with atomic_file(path) as tmp:
        writer(str(tmp))


def _torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` with the same bytes for the same tensors: serialised in memory, then written atomically.

    Saved straight to the temporary file, the zip archive inside is named after that file, so the bytes and
    the sha256 recorded for shipped weights would change from run to run.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def _write_json(path: Path, data: Any) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")

    _atomic_write_bytes(path, w)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Checkpoint with the highest step in ``out_dir/checkpoints`` (``None`` if there is none)."""
    d = Path(out_dir) / "checkpoints"
    if not d.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT.match(p.name)))
    return found[-1][1] if found else None


def _git_info() -> dict[str, Any]:
    """Commit of the source tree; ``SIIBRA_ANCHOR_GIT_COMMIT`` names it where the tree has no .git (a copy)."""
    if os.environ.get("SIIBRA_ANCHOR_GIT_COMMIT"):
        return {"git_commit": os.environ["SIIBRA_ANCHOR_GIT_COMMIT"], "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"git_commit": commit, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def _default_command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("training", "__main__.py")):
        return "python -m siibra_anchor.training " + shlex.join(argv[1:])
    return shlex.join(argv)


def _plot(curves: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot of the training curves (curves.json has them)")
        return
    tr, va, base = curves.get("train", []), curves.get("val", []), curves.get("baseline_raw_pixel")
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    if tr:
        ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr])
        ax[1].plot([r["step"] for r in tr], [r["lr"] for r in tr])
    ax[0].set(xlabel="step", ylabel="training loss", title="loss")
    ax[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
    names = sorted({k for r in va for k in r.get("per_volume", {})})
    for i, name in enumerate(names):
        color = f"C{i}"
        pts = [(r["step"], r["per_volume"][name]["median_mm"]) for r in va if name in r.get("per_volume", {})]
        ax[2].plot(*zip(*pts, strict=True), "o-", color=color, label=f"{name} (encoder)")
        if base and name in base.get("per_volume", {}):
            ax[2].axhline(base["per_volume"][name]["median_mm"], ls="--", color=color, label=f"{name} (raw pixels)")
    if va:
        ax[2].plot([r["step"] for r in va], [r["median_mm"] for r in va], "k.-", label="all queries")
        if base:
            ax[2].axhline(base["median_mm"], ls=":", color="k", label="all queries (raw pixels)")
    ax[2].set(xlabel="step", ylabel="median top-1 error (mm)", title="validation patch error")
    if names or va:
        ax[2].legend(fontsize=7)
    fig.tight_layout()
    _atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def plot_curves(curves_json: str | Path, png: str | Path | None = None) -> Path:
    """Draw a run's ``curves.json`` as a PNG (default: ``curves.png`` beside it). Needs matplotlib."""
    src = Path(curves_json)
    if not src.is_file():
        raise TrainingFileNotFoundError(f"{src} not found: is this the output folder of a training run?")
    import matplotlib  # noqa: F401 - fail loudly here rather than log a warning

    dst = Path(png) if png else src.with_name("curves.png")
    _plot(json.loads(src.read_text()), dst)
    return dst


# -- training ----------------------------------------------------------------------------------------------


def _synth_params(cfg: TrainConfig) -> SynthParams:
    return SynthParams(**cfg.synth.model_dump(exclude={"n", "every", "source", "workers"}))


class _StepBatches(torch.utils.data.Dataset):
    """Map-style view ``dataset[step] -> [PatchBatch, ...]`` so DataLoader workers produce seeded batches.

    A step's batch is a plane batch (volumes) and/or a store batch, both drawn from one generator seeded
    by ``(seed, rank, step)``.
    """

    def __init__(self, sampler: PlanePatchSampler | None, stores: list[ZarrPatchDataset], cfg: TrainConfig, rank: int):
        self.sampler, self.stores, self.rank = sampler, stores, rank
        # domain randomisation: synthetic brains join the sampler's volumes, new ones every synth.every steps
        self.base = list(sampler.volumes) if sampler is not None else []
        self.synth = None
        if sampler is not None and cfg.synth.n > 0:
            source = load_training_volumes([cfg.synth.source], npz=cfg.volumes_npz)[0]
            self.synth = SynthVolumes(
                source, cfg.synth.n, cfg.synth.every, cfg.seed * 1000 + rank, _synth_params(cfg), cfg.synth.workers
            )
        self.batch_size, self.seed = cfg.batch_size, cfg.seed
        self.n_store = (
            0 if not stores else (cfg.batch_size if sampler is None else round(cfg.store_fraction * cfg.batch_size))
        )

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, step: int) -> list[PatchBatch]:
        rng = np.random.default_rng([self.seed, self.rank, int(step)])
        parts = []
        if self.synth is not None and self.sampler is not None:
            fresh = self.synth.refresh(int(step))
            if fresh is not None:
                self.sampler.set_volumes(self.base + fresh)
        if self.sampler is not None and self.batch_size > self.n_store:
            parts.append(self.sampler.sample(self.batch_size - self.n_store, seed=rng))
        if self.n_store:
            store = self.stores[int(rng.integers(len(self.stores)))]
            parts.append(store.sample(self.n_store, seed=rng))
        return parts


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _batches(ds: _StepBatches, cfg: TrainConfig, start: int):
    on_cpu = ds.sampler is None or ds.sampler.device.type == "cpu"
    if cfg.num_workers > 0 and on_cpu:
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            sampler=range(start, cfg.steps),
            num_workers=cfg.num_workers,
            worker_init_fn=_worker_init,
            prefetch_factor=2,
        )
        yield from loader
    else:
        for step in range(start, cfg.steps):
            yield ds[step]


def _open_stores(cfg: TrainConfig) -> list[ZarrPatchDataset]:
    stores = []
    for path in cfg.patch_stores:
        st = ZarrPatchDataset(path, groups=max(cfg.groups, 1), far_fraction=cfg.far_fraction)
        if st.size_px < cfg.patch.size_px:
            raise TrainConfigError(f"patch store {path} holds {st.size_px}px patches, smaller than patch.size_px")
        if st.spacing_mm is not None and abs(float(st.spacing_mm) - cfg.patch.spacing_mm) > 1e-3 * cfg.patch.spacing_mm:
            raise TrainConfigError(
                f"patch store {path} was cut at {st.spacing_mm} mm/px but patch.spacing_mm is {cfg.patch.spacing_mm}"
            )
        stores.append(st)
    return stores


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: WarmupCosine,
    step: int,
    curves: dict[str, Any],
    cfg: TrainConfig,
    elapsed: float,
    keep: int,
) -> None:
    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": int(step),
        "elapsed_s": float(elapsed),
        "curves": json.loads(json.dumps(curves)),
        "config": json.loads(cfg.model_dump_json()),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    _torch_save(path, state)
    ckpts = sorted(p for p in path.parent.iterdir() if _CKPT.match(p.name))
    for old in ckpts[:-keep]:
        old.unlink()


def _build_val(cfg: TrainConfig, spec: PatchSpec) -> ValidationSet:
    ref = load_training_volumes([cfg.val.reference], npz=cfg.volumes_npz)[0]
    queries = load_volumes(cfg.val.queries, npz=cfg.volumes_npz, params=_synth_params(cfg))
    held = set(cfg.val.queries) & set(cfg.volumes)
    if held:
        log.warning("validation query volume(s) %s are also training volumes: the error is not held out", sorted(held))
    return build_validation_set(
        ref,
        queries,
        spec,
        axes=cfg.val.axes,
        ref_step_mm=cfg.val.ref_step_mm,
        ref_stride_px=cfg.val.ref_stride_px,
        n_queries=cfg.val.n_queries,
        tilt_deg=cfg.val.tilt_deg,
        inplane_rotation_deg=cfg.val.inplane_rotation_deg,
        seed=cfg.val.seed,
    )


def train(
    config: TrainConfig | dict[str, Any] | str | Path | None = None,
    *,
    resume: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train a patch encoder (default :class:`~siibra_anchor.encoders.PatchEncoder`) by spatial contrastive learning.

    Parameters
    ----------
    config : a :class:`TrainConfig`, a dict of its fields, or a YAML/JSON file.
    resume : continue from the latest checkpoint in ``config.out_dir`` (a fresh start if there is none).
    command : the command line to record with the weights (default: this process's ``sys.argv``).

    Returns
    -------
    dict with ``out_dir``, ``steps`` (steps done), ``final_loss``, ``val`` and ``baseline_raw_pixel``
    (validation metrics, see :func:`~siibra_anchor.training.validation.evaluate`), ``encoder`` (path),
    ``sha256``, ``encoder_hash``, ``world_size``, ``device`` and ``curves``. Ranks other than 0 return
    the same keys without files.
    """
    cfg = load_config(config)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    device = _resolve_device(cfg, local)
    d = _init_dist(cfg, device)
    ok = False
    try:
        out = _train(cfg, d, device, resume, command or _default_command())
        ok = True
        return out
    finally:
        torch.set_num_threads(threads)
        if d.owns_group:
            import torch.distributed as dist

            if ok:
                # every rank leaves together: a rank that tears gloo down while rank 0 still writes the
                # weights (rank 0 also hosts the rendezvous store) can abort in gloo's C++ threads
                dist.barrier()
            dist.destroy_process_group()


def _init_from(model: nn.Module, cfg: TrainConfig) -> None:
    """Load ``cfg.init_weights`` (a recorded encoder's name: shipped or, from a clone, a lineage one; or a
    weights/checkpoint path) into ``model``."""
    from siibra_anchor.encoders import default_manifest, load_default_encoder, load_encoder

    src = str(cfg.init_weights)
    if src in default_manifest()["encoders"]:
        load = partial(load_default_encoder, src)
    elif Path(src).is_file():
        load = partial(load_encoder, src, cfg.encoder_config())
    else:
        raise TrainConfigError(
            f"init_weights {src!r} is neither a shipped encoder nor a file; give a path to an encoder.pt or "
            "a checkpoint, or a name from siibra_anchor.encoders.shipped_encoders() or lineage_encoders()"
        )
    try:
        source = load()
    except AnchorError as exc:  # weights that do not fit, a checksum that fails, a lineage name outside a clone
        raise TrainConfigError(f"init_weights {src!r} could not be loaded: {exc}") from exc
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise TrainConfigError(f"init_weights {src!r} do not fit the encoder {cfg.encoder_config()}: {exc}") from exc
    log.info("initialised the encoder from %s", src)


def _train(cfg: TrainConfig, d: _Dist, device: torch.device, resume: bool, command: str) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    spec = PatchSpec(spacing_mm=cfg.patch.spacing_mm, size_px=cfg.patch.size_px, min_tissue=cfg.patch.min_tissue)
    use_amp = bool(cfg.amp and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # batches have a fixed shape
        torch.backends.cuda.matmul.allow_tf32 = True
    t_setup = time.perf_counter()

    torch.manual_seed(cfg.seed)
    try:
        model = build_encoder(cfg.encoder_config())
    except TypeError as exc:  # an option the encoder class does not take
        raise TrainConfigError(f"encoder config {cfg.encoder_config()} is not accepted by the encoder: {exc}") from exc
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainConfigError(f"encoder {cfg.encoder.arch!r} has no trainable parameters")
    if cfg.init_weights:
        _init_from(model, cfg)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = WarmupCosine(opt, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)

    stores = _open_stores(cfg)
    sampler = None
    if cfg.volumes:
        sampler = PlanePatchSampler(
            load_training_volumes(cfg.volumes, npz=cfg.volumes_npz),
            spec,
            context_px=cfg.context_px,
            families=cfg.planes,
            tilt_deg=cfg.tilt_deg,
            inplane_rotation_deg=cfg.inplane_rotation_deg,
            mirror_prob=cfg.mirror_prob,
            orientation=cfg.orientation,
            scale_jitter=cfg.scale_jitter,
            groups=cfg.groups,
            planes_per_group=cfg.planes_per_group,
            group_radius_mm=cfg.group_radius_mm,
            far_fraction=cfg.far_fraction,
            far_per_plane=cfg.far_per_plane,
            mix_volumes=cfg.mix_volumes,
            device=device,
        )
    data = _StepBatches(sampler, stores, cfg, d.rank)
    aug = default_pipeline(cfg.augment.model_dump(), crop_to=cfg.patch.size_px)

    curves: dict[str, Any] = {"train": [], "val": [], "baseline_raw_pixel": None}
    start, elapsed0 = 0, 0.0
    if resume:
        ck = latest_checkpoint(out)
        if ck is None:
            log.info("no checkpoint in %s: starting from step 0", out / "checkpoints")
        else:
            state: dict[str, Any] = torch.load(ck, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start, elapsed0, curves = int(state["step"]), float(state.get("elapsed_s", 0.0)), state["curves"]
            log.info("resumed from %s at step %d", ck, start)
    if start >= cfg.steps:
        log.info("checkpoint step %d >= steps %d: nothing left to train", start, cfg.steps)

    vset = None
    if d.main and cfg.val.enabled:
        vset = _build_val(cfg, spec)
        log.info("validation set: %s patches", vset.summary())
        if curves.get("baseline_raw_pixel") is None:
            curves["baseline_raw_pixel"] = evaluate(RawPixelEncoder(), vset, device, cfg.val.batch_size)
    log.info("setup took %.1f s", time.perf_counter() - t_setup)

    net: nn.Module = model
    if d.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def validate(step: int) -> dict[str, Any] | None:
        if vset is None:
            return None
        res = evaluate(model, vset, device, cfg.val.batch_size)
        res["step"] = step
        curves["val"].append(res)
        log.info(
            "step %d validation: median %.1f mm, p90 %.1f mm (%s)",
            step,
            res["median_mm"],
            res["p90_mm"],
            ", ".join(f"{k} {v['median_mm']:.1f}" for k, v in res["per_volume"].items()),
        )
        return res

    bar = None
    if cfg.progress and d.main:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
        except ImportError:
            bar = None
    ckdir = out / "checkpoints"
    source = _git_info()  # the code that trains, read now: the tree may change while a long run goes on
    t0 = time.perf_counter() - elapsed0
    loss_sum, loss_n, step, stopped_early = 0.0, 0, start, False
    last_loss = float("nan")
    net.train()
    for step, parts in enumerate(_batches(data, cfg, start), start=start):
        time_frac = 0.0
        if cfg.time_limit_s:
            # rank 0's clock decides, so every rank stops at the same step with the same learning rate
            (time_frac,) = _broadcast([(time.perf_counter() - t0) / cfg.time_limit_s], d, device)
            if time_frac >= 1.0:
                stopped_early = True
                break
        lr = sched.set(step, time_frac)
        gen = torch.Generator(device=device)
        gen.manual_seed(step_seed(cfg.seed, d.rank, step, 1))
        xs = [p.patches.to(device, non_blocking=True) for p in parts]  # sizes may differ: aug crops all to P
        c = torch.cat([p.centres.to(device, non_blocking=True) for p in parts])
        views = torch.cat([aug(x, generator=gen) for _ in range(cfg.views) for x in xs])[:, None]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            z = net(views)
        z = z.float()
        if cfg.loss == "infonce":
            n = c.shape[0]
            loss = info_nce_loss(z[:n], z[n:], cfg.temperature)
        else:
            loss = spatial_contrastive_loss(
                z, c.repeat(cfg.views, 1), cfg.sigma_mm, cfg.temperature, cfg.max_distance_sigmas
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_sum += float(loss.detach())
        loss_n += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            last_loss = _all_mean(loss_sum / loss_n, d, device)
            curves["train"].append(
                {"step": done, "loss": last_loss, "lr": lr, "elapsed_s": round(time.perf_counter() - t0, 3)}
            )
            loss_sum, loss_n = 0.0, 0
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
        if bar is not None:
            bar.update(1)
        if d.main and cfg.val.every and done % cfg.val.every == 0 and done < cfg.steps:
            validate(done)
        if d.main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            _save_checkpoint(
                ckdir / f"step-{done:08d}.pt",
                model,
                opt,
                sched,
                done,
                curves,
                cfg,
                time.perf_counter() - t0,
                cfg.keep_checkpoints,
            )
            _write_json(out / "curves.json", curves)
        step = done
    if data.synth is not None:
        data.synth.close()
    if bar is not None:
        bar.close()
    if loss_n:
        last_loss = _all_mean(loss_sum / loss_n, d, device)
        curves["train"].append(
            {"step": step, "loss": last_loss, "lr": sched.last_lr, "elapsed_s": round(time.perf_counter() - t0, 3)}
        )
    train_time = time.perf_counter() - t0
    final = (
        validate(step)
        if (d.main and (step > start or not curves["val"]))
        else (curves["val"][-1] if curves["val"] else None)
    )

    summary: dict[str, Any] = {
        "out_dir": str(out),
        "steps": step,
        "final_loss": last_loss,
        "val": final,
        "baseline_raw_pixel": curves.get("baseline_raw_pixel"),
        "world_size": d.world,
        "device": str(device),
        "stopped_early": stopped_early,
        "train_time_s": round(train_time, 1),
        "curves": curves,
        "encoder": None,
        "sha256": None,
    }
    from siibra_anchor.encoders import encoder_hash

    summary["encoder_hash"] = encoder_hash(model)
    if not d.main:
        return summary
    if not (ckdir / f"step-{step:08d}.pt").exists():
        _save_checkpoint(
            ckdir / f"step-{step:08d}.pt", model, opt, sched, step, curves, cfg, train_time, cfg.keep_checkpoints
        )
    weights = out / "encoder.pt"
    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    _torch_save(weights, state)
    sha = file_sha256(weights)
    manifest = {
        "name": f"{cfg.encoder.arch}-w{cfg.encoder.width}-d{cfg.encoder.dim}-spatial-contrastive",
        "config": cfg.encoder_config(),
        "file": "encoder.pt",
        "sha256": sha,
        "patch_spec": {"spacing_mm": spec.spacing_mm, "size_px": spec.size_px},
        "trained_by": command,
        "command": command,
        **source,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "steps": step,
        "stopped_early": stopped_early,
        "train_time_s": round(train_time, 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": d.world,
        "amp_bf16": use_amp,
        "torch": torch.__version__,
        "final_loss": last_loss,
        "val": final,
        "baseline_raw_pixel": curves.get("baseline_raw_pixel"),
        "train_config": json.loads(cfg.model_dump_json()),
    }
    _write_json(out / "encoder.json", manifest)
    _write_json(out / "curves.json", curves)
    _plot(curves, out / "curves.png")
    summary.update(encoder=str(weights), sha256=sha)
    return summary
