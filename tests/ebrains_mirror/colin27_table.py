"""Anchoring error in Colin27 (through siibra, on the local EBRAINS mirror) beside MNI152, same sections.

Run from the repository root::

    cd tests && ../.venv/bin/python -m ebrains_mirror.colin27_table --n 8

Sections are cut by :func:`siibra_anchor.simulate.simulate_section` from FSL's MNI152 T1 (a template of the
MNI152 family that neither reference is built from), with random orientation, offset, tilt (0-10 deg) and
in-plane rotation. Each is anchored twice with default parameters: against the embedded MNI152 2009c
reference, and against the Colin27 reference that ``Reference.from_space("colin27")`` builds through siibra
from the mirror (the stand-in whole-head Colin27 from the real ``zip/nii`` provider, skull-stripped). The
truth in Colin27 is the MNI152 truth moved by the mirror's MNI152 -> Colin27 affine. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="sections (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(args)
    work = Path(tempfile.mkdtemp(prefix="colin27-table-"))
    os.environ.setdefault("SIIBRA_ANCHOR_CACHE", str(work / "cache"))  # stand-in templates stay out of yours
    from siibra_anchor.adapters import siibra_config

    import siibra_anchor as sa
    from siibra_anchor.simulate import section_error, simulate_section

    from .mirror import COLIN27_FROM_MNI152, start_mirror

    mirror = start_mirror(work)
    siibra_config.use_local(mirror.config)  # imports siibra with its cache inside SIIBRA_ANCHOR_CACHE
    from siibra.locations.location import Location

    Location.SPACEWARP_SERVER = mirror.warp_url
    rng = np.random.default_rng(ns.seed)
    sims = [
        simulate_section(
            "fsl-mni152-t1",
            orientation=str(rng.choice(["coronal", "sagittal", "axial"])),
            tilt_deg=float(rng.uniform(0, 10)),
            rotation_deg=float(rng.uniform(-20, 20)),
            spacing_mm=0.4,
            seed=int(rng.integers(1 << 30)),
            name=f"s{i}",
        )
        for i in range(ns.n)
    ]
    rows = []
    for space, warp in (("mni152", np.eye(4)), ("colin27", COLIN27_FROM_MNI152)):
        t = time.perf_counter()
        ref = sa.Reference.from_space(space)
        t_ref = time.perf_counter() - t
        errs, secs = [], []
        for sim in sims:
            t = time.perf_counter()
            res = sa.anchor(sim.section, reference=ref, seed=0)
            secs.append(time.perf_counter() - t)
            errs.append(section_error(res.affine, warp @ sim.true_affine, sim.section.mask))
        e = np.asarray(errs)
        rows.append((space, ref.n_patches, t_ref, float(np.median(e)), float(np.percentile(e, 90)), e, secs))
    kinds = " ".join(f"{sim.params.get('orientation', '?')[:3]}" for sim in sims)
    print(f"{ns.n} sections from FSL's MNI152 T1 (seed {ns.seed}: {kinds}); error = mean over tissue px, mm\n")
    print("| space | reference patches | median mm | p90 mm | failures (> 10 mm) | s / section | per-section mm |")
    print("|---|---|---|---|---|---|---|")
    for space, n_p, _t_ref, med, p90, e, secs in rows:
        fails = int((e > 10).sum())
        per = " ".join(f"{v:.1f}" for v in e)
        print(f"| {space} | {n_p} | {med:.2f} | {p90:.2f} | {fails} of {len(e)} | {np.mean(secs):.1f} | {per} |")
    mirror.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
