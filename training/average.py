"""Average the weights of encoders fine-tuned one from another (a "model soup", Wortsman et al., ICML 2022).

    python -m siibra_anchor.training.average patch-cnn-w24-d128-pool2-v2-cpuft3 runs/cpu_finetune4/encoder.pt \\
        runs/cpu_finetune5/encoder.pt --out runs/soup [--validate training/configs/cpu_finetune5.yaml]

Each argument is a shipped encoder name (checked against its sha256) or a trained ``encoder.pt`` with the
``encoder.json`` the trainer wrote beside it. All must have the same encoder config. The output is what
the trainer writes: ``encoder.pt`` (the element-wise mean of every parameter and buffer) and
``encoder.json`` (config, sha256, the sources with their sha256, the command). With ``--validate CONFIG``
the soup is scored on that training config's validation set (``val:``), the figures the trainer prints at
the end of a run, with the raw-pixel baseline beside them; they go into ``encoder.json`` under ``val`` and
``baseline_raw_pixel`` as for a trained encoder.

Averaging only makes sense for weights that share a lineage (one fine-tuned from the other, or both from
one start): they lie in one basin of the loss, so their mean does too. The encoders here use GroupNorm
(no running statistics), so the mean needs no recalibration pass.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from siibra_anchor.errors import AnchorError

from .errors import TrainConfigError

__all__ = ["average_state_dicts", "average_encoders", "main"]


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys and shapes (float64 sums, original dtype back)."""
    if len(states) < 2:
        raise TrainConfigError(f"averaging needs at least two encoders, got {len(states)}")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise TrainConfigError(
                f"encoder {i} has other parameters than encoder 0 ({sorted(set(s) ^ set(keys))[:5]}); "
                "average only encoders of the same config"
            )
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        t0 = states[0][k]
        for i, s in enumerate(states[1:], 1):
            if s[k].shape != t0.shape:
                raise TrainConfigError(
                    f"parameter {k!r} has shape {tuple(s[k].shape)} in encoder {i} and {tuple(t0.shape)} in encoder "
                    "0; average only encoders of the same config"
                )
        if not t0.is_floating_point():
            raise TrainConfigError(f"parameter {k!r} is not floating point ({t0.dtype}); it cannot be averaged")
        acc = torch.zeros(t0.shape, dtype=torch.float64)
        for s in states:
            acc += s[k].detach().to(torch.float64)
        out[k] = (acc / len(states)).to(t0.dtype).contiguous()
    return out


def _source(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder module and a record of where it came from (name or path, sha256)."""
    from siibra_anchor.cache import file_sha256
    from siibra_anchor.encoders import default_manifest

    from .compare import load_any_encoder

    p = Path(name)
    if p.suffix == ".pt":
        if not p.with_suffix(".json").is_file():
            raise TrainConfigError(
                f"{name}: no {p.with_suffix('.json').name} beside it; give an encoder.pt the trainer wrote, or a "
                "shipped encoder's name"
            )
        return load_any_encoder(name), {"path": str(p), "sha256": file_sha256(p)}
    entry = default_manifest()["encoders"].get(name)
    if entry is None or not entry.get("file"):
        raise TrainConfigError(f"{name!r} is neither an encoder.pt nor a shipped encoder with weights")
    return load_any_encoder(name), {"shipped": name, "sha256": entry["sha256"]}


def average_encoders(
    names: list[str], out_dir: str | Path, validate: str | Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """Average ``names`` into ``out_dir/encoder.pt`` and write ``encoder.json``; returns that manifest."""
    from siibra_anchor.cache import file_sha256

    from .trainer import _torch_save, _write_json

    if len(names) < 2:
        raise TrainConfigError(f"averaging needs at least two encoders, got {len(names)}")
    models, sources = zip(*(_source(n) for n in names), strict=True)
    configs: list[dict[str, Any]] = [dict(m.config) for m in models]
    if any(c != configs[0] for c in configs[1:]):
        raise TrainConfigError(f"the encoders have different configs ({configs}); average only one config")
    state = average_state_dicts([m.state_dict() for m in models])
    scores = _validate(state, configs[0], validate) if validate is not None else {}  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _torch_save(out / "encoder.pt", state)  # the trainer's writer: the same weights give the same bytes
    manifest: dict[str, Any] = {
        "name": "weight-average",
        "config": configs[0],
        "file": "encoder.pt",
        "sha256": file_sha256(out / "encoder.pt"),
        "averaged_from": list(sources),
        "command": command
        or shlex.join(["python", "-m", "siibra_anchor.training.average", *names, "--out", str(out_dir)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "torch": torch.__version__,
    }
    manifest.update(scores)
    _write_json(out / "encoder.json", manifest)
    return manifest


def _validate(state: dict[str, torch.Tensor], enc_config: dict[str, Any], config: str | Path) -> dict[str, Any]:
    """The trainer's end-of-run validation figures for ``state``, with the raw-pixel baseline."""
    from siibra_anchor.encoders import RawPixelEncoder, build_encoder
    from siibra_anchor.patches import PatchSpec

    from .config import load_config
    from .trainer import _build_val
    from .validation import evaluate

    cfg = load_config(config)
    if cfg.encoder_config() != enc_config:
        raise TrainConfigError(
            f"--validate {config}: its encoder {cfg.encoder_config()} is not the averaged one {enc_config}"
        )
    spec = PatchSpec(spacing_mm=cfg.patch.spacing_mm, size_px=cfg.patch.size_px, min_tissue=cfg.patch.min_tissue)
    vset = _build_val(cfg, spec)
    model = build_encoder(enc_config)
    model.load_state_dict(state)
    model.eval()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return {
            "val": evaluate(model, vset, batch_size=cfg.val.batch_size),
            "baseline_raw_pixel": evaluate(RawPixelEncoder(), vset, batch_size=cfg.val.batch_size),
            "val_config": str(config),
        }
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m siibra_anchor.training.average", description=__doc__.split("\n")[0])
    ap.add_argument("encoders", nargs="+", help="shipped encoder names or encoder.pt files (at least two)")
    ap.add_argument("--out", required=True, help="folder for encoder.pt and encoder.json")
    ap.add_argument("--validate", metavar="CONFIG", help="score on this training config's validation set")
    a = ap.parse_args(argv)
    cmd = shlex.join(["python", "-m", "siibra_anchor.training.average", *(sys.argv[1:] if argv is None else argv)])
    try:
        man = average_encoders(a.encoders, a.out, validate=a.validate, command=cmd)
    except AnchorError as exc:  # TrainConfigError, a weights file that fails its sha256 or cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"encoder: {Path(a.out) / 'encoder.pt'} sha256 {man['sha256']} (mean of {len(a.encoders)} encoders)")
    if "val" in man:
        v, b = man["val"], man["baseline_raw_pixel"]
        for name, r in v["per_volume"].items():
            print(
                f"  {name}: median top-1 error {r['median_mm']:.1f} mm (raw pixels {b['per_volume'][name]['median_mm']:.1f} mm)"
            )
        print(f"  all queries: {v['median_mm']:.1f} mm, p90 {v['p90_mm']:.1f} mm (raw pixels {b['median_mm']:.1f} mm)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
