"""``siibra-anchor anchor`` (one section image) and ``siibra-anchor demo`` (a section with known truth)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_anchor_options, emit, run

__all__ = ["register", "main"]


def register(sub: Any) -> None:
    p = sub.add_parser("anchor", help="anchor one section image")
    p.add_argument("image", help="PNG, TIFF (incl. pyramidal), NIfTI or OME-Zarr section")
    p.add_argument(
        "--spacing-mm", type=float, default=None, help="pixel spacing in mm (required unless the file has it)"
    )
    p.add_argument("--out", default=None, help="result JSON (default: IMAGE.anchor.json next to the image)")
    p.add_argument("--modality", default="unknown", help="free text kept with the result (nissl, pli, ...)")
    p.add_argument("--qc", default=None, metavar="PNG", help="also write a quality-control figure (siibra_anchor.qc)")
    add_anchor_options(p)
    p.set_defaults(run=anchor_cmd)

    p = sub.add_parser("demo", help="anchor a real section cut from a template that is not the reference one")
    p.add_argument("--out", default="siibra-anchor-demo", help="folder for the section image and result")
    p.add_argument("--volume", default="fsl-mni152-t1", help="volume the demo section is cut from")
    p.add_argument("--orientation", default="coronal", choices=["coronal", "sagittal", "axial"])
    p.add_argument("--rotation-deg", type=float, default=35.0)
    p.add_argument("--tilt-deg", type=float, default=8.0)
    add_anchor_options(p)
    p.set_defaults(run=demo_cmd)


def anchor_cmd(ns: argparse.Namespace) -> int:
    import siibra_anchor as sa

    from ..patches import PatchSpec

    # TIFF / OME-Zarr are read lazily, block-averaged to 1/4 of the encoder's working spacing
    section = sa.Section.from_file(
        ns.image,
        spacing_mm=ns.spacing_mm,
        modality=ns.modality,
        target_spacing_mm=PatchSpec().spacing_mm / 4.0,
        reduce=True,
    )
    res = sa.anchor(
        section,
        space=ns.space,
        n_patches=ns.n_patches,
        seed=ns.seed,
        progress=not ns.quiet,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
        cut=ns.cut,
        device=ns.device,
    )
    out = Path(ns.out) if ns.out else Path(str(ns.image).rstrip("/") + ".anchor.json")
    res.save(out)
    emit(res.summary())
    emit(f"result      {out}")
    if ns.qc:
        res.plot_qc(ns.qc, section=section)
        emit(f"qc figure   {ns.qc}")
    return 0


def demo_cmd(ns: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    import siibra_anchor as sa

    from ..evaluation.simulate import section_error, simulate_section

    sim = simulate_section(
        volume=ns.volume,
        orientation=ns.orientation,
        rotation_deg=ns.rotation_deg,
        tilt_deg=ns.tilt_deg,
        offset_mm=-12.0,
        spacing_mm=0.4,
        contrast="as-is",
        seed=ns.seed,
        name=f"demo-{ns.volume}-{ns.orientation}",
    )
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "section.png"
    img8 = (np.clip(sim.section.image, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(img8).save(png)
    np.savetxt(out / "true_affine.txt", sim.true_affine)
    emit(f"demo section {png}: cut from {ns.volume} ({sa.templates.VOLUMES[ns.volume].description})")
    emit(f"             {ns.orientation}, rotated {ns.rotation_deg} deg, tilted {ns.tilt_deg} deg, 0.4 mm/px")
    section = sa.Section.from_file(png, spacing_mm=0.4, name=sim.section.name)
    res = sa.anchor(
        section,
        space=ns.space,
        seed=ns.seed,
        progress=not ns.quiet,
        hemisphere=ns.hemisphere,
        flipped=ns.flipped,
        cut=ns.cut,
        device=ns.device,
        n_patches=ns.n_patches,
    )
    res.save(out / "result.json")
    emit(res.summary())
    err = section_error(res.affine, sim.true_affine, sim.section.mask)
    emit(
        f"error       {err:.2f} mm mean over the tissue against the true placement "
        f"({res.diagnostics['timings']['total_s']:.1f} s)"
    )
    emit(f"result      {out / 'result.json'}")
    try:
        url = res.neuroglancer_url(state_path=out / "neuroglancer_state.json")  # the matches go beside the link
    except ImportError as exc:  # the viewer extra is optional; the viewer's error says how to install it
        emit(f"neuroglancer: not available ({exc})")
    else:
        (out / "neuroglancer_url.txt").write_text(url + "\n")
        emit(f"neuroglancer {out / 'neuroglancer_url.txt'}")
    return 0


def main(args: list[str] | None = None) -> int:
    """``python -m siibra_anchor.cli.anchor anchor IMAGE ...`` (the same as ``siibra-anchor anchor ...``)."""
    return run([register], args)
