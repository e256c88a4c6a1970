"""``siibra-anchor view`` (Neuroglancer, local and offline, or a screenshot) and ``siibra-anchor train``."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("view", help="show a result in Neuroglancer (local, offline) or render a screenshot")
    from ..viewer.cli import add_view_arguments

    add_view_arguments(p)
    p.set_defaults(run=view_cmd)

    p = sub.add_parser("train", help="train a patch encoder (see siibra_anchor.training)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG.yaml [--resume] [--steps N] [--out DIR]")
    p.set_defaults(run=train_cmd)


def view_cmd(ns: argparse.Namespace) -> int:
    from ..viewer.cli import view_main

    return int(view_main(ns) or 0)


def train_cmd(ns: argparse.Namespace) -> int:
    from ..training.cli import main as train_main

    return int(train_main(ns.args) or 0)


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.view view|train ...``."""
    return run([register], args)
