"""Reliability report: feed bad inputs, damaged files, fuzzed values and injected faults to the public API.

``siibra-anchor reliability [--out docs/reliability.md] [--quick]`` runs every case here for real and
tabulates what happened: the typed error each kind of bad input raised, how many damaged files of each
format were refused or still decoded, how many fuzz examples ran, whether killed / concurrent builds and
corrupt cache entries were recovered, how fast "no network" fails, and the confidence given to images that
are not human brain sections. Any exception that is not an :class:`~siibra_anchor.errors.AnchorError`
counts as a failure of the library (outcome ``UNTYPED <class>``).

The case generators (:func:`damaged_variants`, :func:`non_brain_sections`, the fuzz strategies of
:func:`fuzz_targets`) are also what ``tests/test_fuzz.py`` and ``tests/test_reliability.py`` use.
Hypothesis (the ``test`` extra) is needed for the fuzz part only.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AnchorError

__all__ = [
    "Case",
    "outcome_of",
    "no_network",
    "damaged_variants",
    "sample_files",
    "non_brain_sections",
    "fuzz_targets",
    "bad_inputs",
    "run_fuzz",
    "fault_reference",
    "build_in_subprocess",
    "kill_build_in_subprocess",
    "run_reliability",
    "format_table",
    "format_markdown",
    "FAULT_VOLUME",
]

log = logging.getLogger(__name__)

#: Volume the fault-injection references are cut from (small builds: 2 coronal planes).
FAULT_VOLUME = "fsl-mni152-t1"


@dataclass
class Case:
    """One row of the report: a kind of input or fault, how often it was tried, and what happened."""

    group: str
    kind: str
    outcomes: Counter = field(default_factory=Counter)
    expected: str = "typed error"
    ok: bool = True
    note: str = ""

    @property
    def count(self) -> int:
        return int(sum(self.outcomes.values()))

    def outcome_text(self) -> str:
        return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(self.outcomes.items(), key=lambda x: -x[1]))


def outcome_of(fn: Callable[[], Any]) -> str:
    """``"works"``, the name of the :class:`AnchorError` subclass ``fn`` raised, or ``"UNTYPED <class>"``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except AnchorError as exc:
        return type(exc).__name__
    except Exception as exc:  # the point of the report: anything untyped is a defect
        log.debug("untyped exception", exc_info=True)
        return f"UNTYPED {type(exc).__name__}"
    return "works"


def _untyped(c: Counter) -> int:
    return sum(v for k, v in c.items() if k.startswith("UNTYPED"))


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Make every socket connection and DNS lookup of this process fail at once (a machine with no network)."""

    def refuse(*a: Any, **k: Any) -> Any:
        raise OSError(101, "Network is unreachable (siibra_anchor.evaluation.reliability.no_network)")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved  # type: ignore[method-assign]


# -- files ------------------------------------------------------------------------------------------------
def _brain_image(seed: int = 0) -> NDArray:
    """(H, W) float32 coronal section of the FSL MNI152 T1 in [0, 1], background 0 (a real brain image)."""
    from .simulate import simulate_section

    return simulate_section(volume=FAULT_VOLUME, orientation="coronal", spacing_mm=1.0, seed=seed).section.image


def sample_files(folder: str | os.PathLike[str], seed: int = 0) -> dict[str, Path]:
    """Write one valid file of every supported kind into ``folder``; returns kind -> path.

    Kinds: png, tiff, ome-tiff (pyramidal), nii, nii.gz, ome-zarr (v2), ome-zarr-v3, result-json.
    """
    import nibabel as nib
    from PIL import Image

    from siibra_anchor.io.formats import write_ome_zarr, write_pyramidal_tiff

    from ..result import AnchoringResult

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = _brain_image(seed)
    u8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    out = {
        "png": folder / "section.png",
        "tiff": folder / "section.tif",
        "ome-tiff": folder / "section.ome.tif",
        "nii": folder / "section.nii",
        "nii.gz": folder / "section.nii.gz",
        "ome-zarr": folder / "section.zarr",
        "ome-zarr-v3": folder / "section-v3.zarr",
        "result-json": folder / "section.anchor.json",
    }
    Image.fromarray(u8).save(out["png"], dpi=(25.4, 25.4))  # 1 px per mm
    import tifffile

    tifffile.imwrite(out["tiff"], u8, resolution=(1.0, 1.0), resolutionunit="CENTIMETER")
    write_pyramidal_tiff(out["ome-tiff"], u8, spacing_mm=1.0, levels=2, tile=64)
    nimg = nib.Nifti1Image(img[:, :, None].astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    nib.save(nimg, out["nii"])
    nib.save(nimg, out["nii.gz"])
    write_ome_zarr(out["ome-zarr"], u8, spacing_mm=1.0, levels=2, chunks=64, zarr_format=2)
    write_ome_zarr(out["ome-zarr-v3"], u8, spacing_mm=1.0, levels=2, chunks=64, zarr_format=3)
    aff = np.array([[0, 0, 1, -90], [-1, 0, 0, 100], [0, -1, 0, 80], [0, 0, 0, 1.0]])
    n = 20
    rng = np.random.default_rng(seed)
    AnchoringResult(
        affine=aff,
        space="mni152",
        confidence=0.8,
        matches={
            "row": rng.random(n) * 100,
            "col": rng.random(n) * 100,
            "x": rng.normal(size=n),
            "y": rng.normal(size=n),
            "z": rng.normal(size=n),
            "similarity": rng.random(n),
            "residual_mm": rng.random(n),
            "inlier": rng.random(n) > 0.5,
        },
        section={"name": "s", "shape": list(img.shape), "spacing_mm": [1.0, 1.0], "modality": "t1"},
    ).save(out["result-json"])
    return out


def _files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def damaged_variants(path: str | os.PathLike[str], dest: str | os.PathLike[str], n: int, seed: int) -> Iterator[Path]:
    """Yield ``n`` damaged copies of file or folder ``path`` at ``dest`` (each replaces the previous one).

    Damage cycles through: truncation at a random length, a flipped bit, an overwritten random byte
    run, an emptied file; for folders (zarr stores) one random file of the store is damaged.
    """
    path, dest = Path(path), Path(dest)
    rng = np.random.default_rng(seed)
    for i in range(n):
        if dest.is_dir():
            shutil.rmtree(dest)
        elif dest.exists():
            dest.unlink()
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            shutil.copyfile(path, dest)
        files = _files_of(dest)
        victim = files[int(rng.integers(len(files)))]
        data = bytearray(victim.read_bytes())
        mode = i % 4
        if not data or mode == 3:
            data = bytearray()
        elif mode == 0:
            data = data[: int(rng.integers(len(data)))]
        elif mode == 1:
            pos = int(rng.integers(len(data)))
            data[pos] ^= 1 << int(rng.integers(8))
        else:
            pos = int(rng.integers(len(data)))
            run = rng.integers(0, 256, size=min(16, len(data) - pos), dtype=np.uint8).tobytes()
            data[pos : pos + len(run)] = run
        victim.write_bytes(bytes(data))
        yield dest


def _read_any(kind: str, path: Path) -> None:
    if kind == "result-json":
        from ..result import AnchoringResult

        AnchoringResult.load(path)
    elif kind == "reference-zarr":
        from ..reference import Reference

        Reference.load(path)
    else:
        from ..section import Section

        Section.from_file(path)


# -- non-brain inputs -------------------------------------------------------------------------------------
def non_brain_sections(seed: int = 0) -> dict[str, Any]:
    """Inputs that are not a human brain section, each as a :class:`Section` at 0.5 mm/px.

    ``noise`` (uniform noise), ``blobs`` (smooth random blobs, photo-like), ``checkerboard``, ``text``
    (lines of rendered text) -- each filling an ellipse on a dark background so tissue detection finds an
    object -- and ``rodent`` (a real brain section shrunk 10x in physical size, the size of a mouse brain,
    with its correct spacing) and ``small-primate`` (shrunk 3x, the size of a marmoset/macaque brain).
    """
    from PIL import Image, ImageDraw
    from scipy import ndimage

    from ..section import Section
    from .simulate import simulate_section

    rng = np.random.default_rng(seed)
    h, w = 300, 360
    yy, xx = np.mgrid[:h, :w]
    ell = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.42 * w)) ** 2 < 1

    def on_dark(tex: NDArray) -> NDArray:
        t = (tex - tex.min()) / max(float(np.ptp(tex)), 1e-9)
        return np.where(ell, 0.3 + 0.7 * t, 0.0).astype(np.float32)

    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    for i in range(14):
        d.text((20, 10 + 20 * i), "The quick brown fox jumps over the lazy dog 0123456789", fill=255)
    out: dict[str, Any] = {
        "noise": Section(on_dark(rng.random((h, w))), spacing_mm=0.5, name="noise"),
        "blobs": Section(
            on_dark(ndimage.gaussian_filter(rng.standard_normal((h, w)), 8)), spacing_mm=0.5, name="blobs"
        ),
        "checkerboard": Section(
            on_dark(((yy // 20 + xx // 20) % 2).astype(float)), spacing_mm=0.5, name="checkerboard"
        ),
        "text": Section(on_dark(np.asarray(im, float)), spacing_mm=0.5, name="text"),
    }
    brain = simulate_section(volume=FAULT_VOLUME, orientation="coronal", spacing_mm=0.5, seed=seed).section
    out["rodent"] = Section(brain.image, spacing_mm=0.05, mask=brain.mask, name="rodent")
    out["small-primate"] = Section(brain.image, spacing_mm=0.5 / 3, mask=brain.mask, name="small-primate")
    return out


# -- fuzzing ----------------------------------------------------------------------------------------------
def fuzz_targets() -> dict[str, tuple[Any, Callable[[Any], Any]]]:
    """name -> (hypothesis strategy, function of one drawn value). Each function must either return or
    raise an :class:`AnchorError`; tests and the report run them with ``hypothesis.given``."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    from ..affine_fit import affine_fit, similarity_fit
    from ..result import AnchoringResult
    from ..section import Section

    dtypes = st.sampled_from(
        ["uint8", "uint16", "int16", "int64", "float16", "float32", "float64", "bool", "complex64"]
    )
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=12)
    arrays = st.one_of(
        dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes)),
        st.lists(st.text(max_size=3), max_size=4),
        st.none(),
    )
    spacings = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)),
        st.lists(st.floats(min_value=1e-3, max_value=1.0), max_size=3),
        st.text(max_size=4),
        st.none(),
        st.integers(-5, 5),
    )

    plausible = st.tuples(st.integers(2, 48), st.integers(2, 48)).flatmap(
        lambda hw: st.tuples(
            hnp.arrays(np.float32, hw, elements=st.floats(0, 255, width=32), fill=st.nothing()),
            st.floats(1e-3, 2.0),
            st.one_of(st.none(), hnp.arrays(np.bool_, hw)),
        )
    )

    def section(v: tuple[Any, ...]) -> Any:
        s = Section(v[0], spacing_mm=v[1], mask=v[2] if len(v) > 2 else None)
        return s.at_spacing(max(s.spacing_mm) * 2)

    def result_dict(v: tuple[str, Any]) -> Any:
        key, value = v
        d = _RESULT_TEMPLATE()
        if key in d:
            d[key] = value
        else:
            d.get("section", {})[key] = value
        r = AnchoringResult.from_dict(d)
        # what loads must be usable: the match table, points, a summary and a JSON round trip
        _ = r.matches, r.to_points([0.0], [0.0]), r.summary()
        return AnchoringResult.from_dict(json.loads(json.dumps(r.to_dict())))

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    json_values = st.one_of(
        scalars,
        st.lists(scalars, max_size=5),
        st.lists(st.lists(scalars, max_size=4), max_size=4),
        st.dictionaries(st.text(max_size=5), scalars | st.lists(scalars, max_size=3), max_size=4),
    )
    result_keys = st.sampled_from(
        [
            "schema_version",
            "affine",
            "confidence",
            "space",
            "matches",
            "alternatives",
            "section",
            "diagnostics",
            "spacing_mm",
        ]
    )
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    pts = st.integers(0, 8).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, (n, 2), elements=floats),
            hnp.arrays(np.float64, (n, 3), elements=floats),
            st.one_of(st.none(), hnp.arrays(np.float64, (n,), elements=floats)),
        )
    )
    degenerate = st.integers(3, 8).flatmap(
        lambda n: st.tuples(
            st.sampled_from(["same", "collinear", "zero-weights"]),
            hnp.arrays(np.float64, (n, 3), elements=st.floats(-100, 100)),
        )
    )

    def fit(v: tuple[NDArray, NDArray, NDArray | None]) -> Any:
        similarity_fit(*v)
        return affine_fit(*v)

    def fit_degenerate(v: tuple[str, NDArray]) -> Any:
        kind, dst = v
        n = len(dst)
        src = np.zeros((n, 2)) if kind == "same" else np.c_[np.arange(n), 2 * np.arange(n)].astype(float)
        w = np.zeros(n) if kind == "zero-weights" else None
        lin, t, _ = similarity_fit(src, dst, w)
        if not (np.all(np.isfinite(lin)) and np.all(np.isfinite(t))):
            raise AssertionError(f"similarity_fit returned non-finite values for {kind} points")
        return affine_fit(src, dst, w)

    return {
        "Section(array, spacing)": (st.one_of(st.tuples(arrays, spacings), plausible), section),
        "AnchoringResult.from_dict(mutated)": (st.tuples(result_keys, json_values), result_dict),
        "similarity_fit/affine_fit(random points)": (pts, fit),
        "similarity_fit/affine_fit(degenerate)": (degenerate, fit_degenerate),
    }


def _RESULT_TEMPLATE() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "siibra_anchor_version": "0.1.0",
        "space": "mni152",
        "affine": [[0.0, 0.0, 1.0, -90.0], [-1.0, 0.0, 0.0, 100.0], [0.0, -1.0, 0.0, 80.0], [0.0, 0.0, 0.0, 1.0]],
        "confidence": 0.7,
        "section": {"name": "s", "shape": [10, 10], "spacing_mm": [1.0, 1.0]},
        "matches": {"row": [1.0], "col": [2.0], "x": [0.0], "y": [0.0], "z": [0.0], "similarity": [0.5]},
    }


def run_fuzz(name: str, n: int, seed: int) -> Counter:
    """Run fuzz target ``name`` on ``n`` hypothesis examples; Counter of outcomes."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    strategy, fn = fuzz_targets()[name]
    counts: Counter = Counter()

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(v: Any) -> None:
        counts[outcome_of(lambda: fn(v))] += 1

    prop()
    return counts


def fuzz_bytes(kind: str, n: int, seed: int, folder: Path) -> Counter:
    """``n`` files of random bytes (random length, some starting with the format's magic) named like ``kind``."""
    magic = {"png": b"\x89PNG\r\n\x1a\n", "tiff": b"II*\x00", "nii": (348).to_bytes(4, "little"), "nii.gz": b"\x1f\x8b"}
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    for i in range(n):
        body = rng.integers(0, 256, size=int(rng.integers(1, 2048)), dtype=np.uint8).tobytes()
        if i % 2:
            body = magic.get(kind, b"") + body
        p = folder / f"random-{i}.{'tif' if kind == 'tiff' else kind}"
        p.write_bytes(body)
        counts[outcome_of(functools.partial(_read_any, kind, p))] += 1
        p.unlink()
    return counts


# -- faults in the reference cache ------------------------------------------------------------------------
_BUILD_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
import siibra_anchor as sa
from siibra_anchor.templates import volume_path
ref = sa.Reference.from_volume(volume_path({volume!r}), space="custom:fault", n_sections=2, axis="coronal")
print(ref.n_patches, float(ref.embeddings.sum()), flush=True)
"""


def _build_cmd() -> list[str]:
    return [sys.executable, "-c", _BUILD_SCRIPT.format(volume=FAULT_VOLUME)]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "SIIBRA_ANCHOR_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}


def build_in_subprocess(cache: str | os.PathLike[str], n: int = 1, timeout_s: float = 600) -> list[tuple[str, str]]:
    """Start ``n`` processes at once that each build (or load) the small fault reference in ``cache``.

    Returns (stdout, stderr) of each; a non-zero exit raises ``RuntimeError`` with its stderr.
    """
    cache = Path(cache)
    procs = [
        subprocess.Popen(_build_cmd(), env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout_s)
        if p.returncode != 0:
            raise RuntimeError(f"reference build process failed ({p.returncode}): {err[-2000:]}")
        outs.append((out, err))
    return outs


def kill_build_in_subprocess(cache: str | os.PathLike[str], when: str = "save", timeout_s: float = 300) -> str:
    """SIGKILL a process that builds the fault reference in ``cache``, mid-build.

    ``when="build"``: as soon as it logs that it builds (embedding patches); ``"save"``: as soon as its
    temporary store appears (writing the zarr). Returns what the cache folder held right after the kill.
    """
    cache = Path(cache)
    refs = cache / "references"
    p = subprocess.Popen(_build_cmd(), env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        if when == "build":
            for line in p.stderr or ():
                if "building reference" in line:
                    break
        else:
            while not (refs.is_dir() and any(refs.glob(".*.tmp"))):
                if p.poll() is not None or time.monotonic() - t0 > timeout_s:
                    raise RuntimeError(f"the build finished (rc {p.returncode}) before its temporary store was seen")
                time.sleep(0.002)
        p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    return " ".join(sorted(x.name for x in refs.iterdir())) if refs.is_dir() else ""


def fault_reference(cache: Path) -> Any:
    from ..reference import Reference
    from ..templates import volume_path

    saved = os.environ.get("SIIBRA_ANCHOR_CACHE")
    os.environ["SIIBRA_ANCHOR_CACHE"] = str(cache)
    with _restore_env(saved):
        return Reference.from_volume(volume_path(FAULT_VOLUME), space="custom:fault", n_sections=2, axis="coronal")


def _corruptions() -> dict[str, Callable[[Path], None]]:
    """Ways to damage a built reference store (in place)."""

    def chunk(p: Path) -> Path:
        return max(
            (f for f in p.rglob("*") if f.is_file() and "embeddings" in f.parts and "zarr.json" not in f.name),
            key=lambda f: f.stat().st_size,
        )

    def truncate(p: Path) -> None:
        c = chunk(p)
        c.write_bytes(c.read_bytes()[: c.stat().st_size // 2])

    def flip(p: Path) -> None:
        c = chunk(p)
        b = bytearray(c.read_bytes())
        b[len(b) // 2] ^= 0x10
        c.write_bytes(bytes(b))

    def garble_meta(p: Path) -> None:
        (p / "zarr.json").write_text("{ not json")

    def delete_array(p: Path) -> None:
        shutil.rmtree(p / "centres_mm")

    def delete_manifest(p: Path) -> None:
        from ..cache import MANIFEST_NAME

        (p / MANIFEST_NAME).unlink()

    return {
        "truncated chunk": truncate,
        "flipped bit in a chunk": flip,
        "garbled zarr.json": garble_meta,
        "deleted array": delete_array,
        "deleted manifest": delete_manifest,
    }


def _run_faults(work: Path, quick: bool) -> list[Case]:
    from ..cache import cache_lock
    from ..errors import CorruptCacheWarning
    from ..reference import Reference

    cases: list[Case] = []
    saved_env = os.environ.get("SIIBRA_ANCHOR_CACHE")
    try:
        # killed builds: nothing partial stays, the next build succeeds
        for when in ("build", "save"):
            cache = work / f"kill-{when}"
            c = Case(
                "faults",
                f"reference build killed (SIGKILL) during {when}",
                expected="no partial entry; next build works",
            )
            try:
                left = kill_build_in_subprocess(cache, when=when)
                ref = fault_reference(cache)
                after = sorted(x.name for x in (cache / "references").iterdir())
                partial = [x for x in after if x.endswith(".tmp") or ".old-" in x]
                loaded = Reference.load(next((cache / "references").glob("*.zarr")), verify=True)
                same = np.array_equal(loaded.embeddings, ref.embeddings)
                c.outcomes["recovered" if not partial and same else "PARTIAL ENTRY LEFT"] += 1
                c.ok = not partial and same
                c.note = f"cache after kill: {left or 'empty'}; after rebuild: {', '.join(after)}"
            except Exception as exc:
                c.outcomes[f"UNTYPED {type(exc).__name__}"] += 1
                c.ok, c.note = False, str(exc)[:200]
            cases.append(c)

        # corrupt cache entries: detected, warned, rebuilt
        cache = work / "corrupt"
        good = fault_reference(cache)
        entry = next((cache / "references").glob("*.zarr"))
        c = Case("faults", "corrupt reference cache entry", expected="detected, warning, rebuilt")
        notes = []
        for name, damage in _corruptions().items():
            damage(entry)
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                ref = fault_reference(cache)
            warned = any(issubclass(x.category, CorruptCacheWarning) for x in w)
            rebuilt = np.array_equal(ref.embeddings, good.embeddings) and np.array_equal(
                ref.centres_mm, good.centres_mm
            )
            verified = outcome_of(lambda: Reference.load(entry, verify=True)) == "works"
            ok = rebuilt and verified and (warned or name == "deleted manifest")
            c.outcomes["recovered" if ok else "NOT RECOVERED"] += 1
            c.ok &= ok
            notes.append(name)
        c.note = "; ".join(notes) + " (a missing manifest is rebuilt quietly: older versions wrote none)"
        cases.append(c)

        # concurrent builds: one process builds, the others wait for the lock and load
        cache = work / "concurrent"
        n = 2 if quick else 3
        c = Case("faults", f"{n} processes build the same reference at once", expected="one builds, others load")
        outs = build_in_subprocess(cache, n=n)
        builds = sum("building reference" in err for _, err in outs)
        loads = sum("loaded cached reference" in err for _, err in outs)
        same = len({out.strip() for out, _ in outs}) == 1
        c.ok = builds == 1 and loads == n - 1 and same
        c.outcomes[f"{builds} built, {loads} loaded, {'identical' if same else 'DIFFERENT'}"] += 1
        cases.append(c)

        # a lock held too long: typed timeout
        c = Case("faults", "cache lock held by another build", expected="CacheLockTimeoutError")
        os.environ["SIIBRA_ANCHOR_LOCK_TIMEOUT"] = "0.5"
        try:
            with cache_lock(next((cache / "references").glob("*.zarr"))):
                c.outcomes[outcome_of(lambda: fault_reference(cache))] += 1
        finally:
            os.environ.pop("SIIBRA_ANCHOR_LOCK_TIMEOUT", None)
        c.ok = set(c.outcomes) == {"CacheLockTimeoutError"}
        cases.append(c)
    finally:
        if saved_env is None:
            os.environ.pop("SIIBRA_ANCHOR_CACHE", None)
        else:
            os.environ["SIIBRA_ANCHOR_CACHE"] = saved_env
    return cases


def _no_network_cases() -> list[Case]:
    import siibra_anchor as sa

    cases = []
    calls: dict[str, Callable[[], Any]] = {
        'Reference.from_space("colin27")': lambda: sa.Reference.from_space("colin27"),
        'Reference.from_space("bigbrain")': lambda: sa.Reference.from_space("bigbrain"),
        'anchor(human section, space="colin27")': lambda: sa.anchor(
            sa.Section(_brain_image(), spacing_mm=1.0), space="colin27"
        ),
    }
    try:
        from siibra_anchor.adapters import regions  # noqa: F401

        calls['assign_regions(parcellation="julich 3.1") on a result'] = lambda: _result_for_regions().assign_regions(
            parcellation="julich 3.1"
        )
    except ImportError:
        pass
    for name, fn in calls.items():
        c = Case("no network", name, expected="typed error within seconds")
        t = time.perf_counter()
        with no_network():
            out = outcome_of(fn)
        dt = time.perf_counter() - t
        c.outcomes[out] += 1
        c.ok = not out.startswith("UNTYPED") and dt < 30
        c.note = f"{dt:.2f} s"
        cases.append(c)
    return cases


def _result_for_regions() -> Any:
    from ..result import AnchoringResult

    return AnchoringResult.from_dict({**_RESULT_TEMPLATE(), "space": "colin27"})


# -- bad inputs at the API boundary -----------------------------------------------------------------------
def bad_inputs(small_ref: Any, files: dict[str, Path], work: Path) -> dict[str, list[Callable[[], Any]]]:
    import siibra_anchor as sa

    from ..encoders import build_encoder, load_encoder
    from ..result import AnchoringResult
    from ..section import Section

    brain = _brain_image()
    good = Section(brain, spacing_mm=1.0)
    nan_img = brain.copy()
    nan_img[5, 5] = np.nan
    inf_img = brain.copy()
    inf_img[5, 5] = np.inf
    newer = json.loads(files["result-json"].read_text())
    newer["schema_version"] = 99
    newer_path = work / "newer.anchor.json"
    newer_path.write_text(json.dumps(newer))
    ragged: Any = [[1, 2], "ab"]
    text: Any = "abc"
    tiny = np.zeros((30, 30), np.float32)
    tiny[5:25, 5:25] = 1.0
    anchor = sa.anchor

    def anc(**kw: Any) -> Callable[[], Any]:
        return lambda: anchor(kw.pop("section", good), reference=small_ref, **kw)

    cases: dict[str, list[Callable[[], Any]]] = {
        "wrong dimensions": [
            lambda: Section(np.zeros(10), 1.0),
            lambda: Section(np.zeros((4, 5, 6, 7)), 1.0),
            lambda: Section(np.zeros((10, 10, 2)), 1.0),
            lambda: Section(np.zeros((3, 20, 20)), 1.0),
            lambda: Section(np.zeros((1, 20)), 1.0),
            lambda: Section(np.zeros((0, 0)), 1.0),
        ],
        "wrong dtype": [
            lambda: Section(np.array([["a", "b"], ["c", "d"]]), 1.0),
            lambda: Section(np.empty((4, 4), object), 1.0),
            lambda: Section(brain.astype(np.complex64), 1.0),
            lambda: Section(np.zeros((4, 4), "datetime64[s]"), 1.0),
            lambda: Section(ragged, 1.0),
        ],
        "NaN / inf pixels": [
            lambda: Section(nan_img, 1.0),
            lambda: Section(inf_img, 1.0),
            lambda: Section(-inf_img, 1.0),
            lambda: Section(nan_img.astype(np.float16), 1.0),
        ],
        "constant or empty image": [
            lambda: Section(np.zeros((50, 50)), 1.0),
            lambda: Section(np.full((50, 50, 3), 7, np.uint8), 1.0),
            lambda: Section(np.ones((50, 50), bool), 1.0),
        ],
        # (an all-true mask is a valid mask since issue #22: a block that fills its frame)
        "bad masks (empty, wrong shape, no tissue)": [
            lambda: Section(brain, 1.0, mask=np.zeros(brain.shape, bool)),
            lambda: Section(brain, 1.0, mask=np.ones((3, 3), bool)),
            lambda: Section(np.random.default_rng(0).normal(size=(80, 90)), 1.0).mask,
        ],
        "spacing missing / zero / negative / absurd": [
            lambda: Section(brain, None),
            lambda: Section(brain, 0.0),
            lambda: Section(brain, -0.5),
            lambda: Section(brain, float("nan")),
            lambda: Section(brain, float("inf")),
            lambda: Section(brain, 1e-9),
            lambda: Section(brain, 500.0),
            lambda: Section(brain, text),
            lambda: Section(brain, (1.0, 2.0, 3.0)),
            lambda: Section(brain, []),
            lambda: Section.from_file(files["png"].with_name("nospacing.png")),
        ],
        "image too small for one patch": [
            anc(section=Section(tiny, spacing_mm=0.1)),
            anc(section=Section(brain, spacing_mm=0.01)),
        ],
        "unknown space": [
            lambda: anchor(good, space="mars"),
            lambda: anchor(good, space=42),
            lambda: sa.Reference.from_space(""),
            lambda: sa.Reference.from_volume(files["nii"], space="not-a-space"),
        ],
        "bad anchor() arguments": [
            lambda: anchor(brain, reference=small_ref),
            anc(seed=-1),
            anc(seed="x"),
            anc(hemisphere="up"),
            anc(flipped="yes"),
            anc(n_patches=2),
            lambda: anchor(good, reference="ref.zarr"),
            anc(params={"k": 3}),
            lambda: sa.anchor_series(good, reference=small_ref),
            lambda: sa.anchor_series([good, brain], reference=small_ref),
        ],
        "bad reference arguments": [
            lambda: sa.Reference.from_volume(files["nii"], space="custom:x", n_sections=0),
            lambda: sa.Reference.from_volume(files["nii"], space="custom:x", n_sections="many"),
            lambda: sa.Reference.from_volume(files["nii"], space="custom:x", axis="diagonal"),
            lambda: sa.Reference.from_volume(files["nii"], space="custom:x", stride_px=0),
            lambda: sa.Reference.from_volume(files["nii"], space="custom:x", cache=False),  # a single slice
            lambda: sa.Reference.from_volume(work / "missing.nii.gz", space="custom:x"),
            lambda: sa.Reference.from_volume(brain, space="custom:x"),
            lambda: sa.Reference.from_sections([], space="custom:x"),
            lambda: sa.Reference.from_sections([(brain, np.eye(4))], space="custom:x"),
            lambda: sa.Reference.from_sections([(good, np.zeros((4, 4)))], space="custom:x"),
            lambda: sa.Reference.from_sections([(good, np.eye(3))], space="custom:x"),
            lambda: sa.Reference.load(work / "missing.zarr"),
            lambda: sa.Reference.load(files["ome-zarr"]),
        ],
        "bad encoder": [
            lambda: build_encoder({"arch": "transformer"}),
            lambda: load_encoder(files["png"], {"arch": "patch-cnn"}),
            lambda: load_encoder(files["png"], {"arch": "patch-cnn"}, sha256="0" * 64),
            lambda: load_encoder(work / "missing.pt", {"arch": "patch-cnn"}),
        ],
        "result JSON: newer schema, wrong content, missing": [
            lambda: AnchoringResult.load(newer_path),
            lambda: AnchoringResult.from_dict({"schema_version": 1}),
            lambda: AnchoringResult.from_dict(ragged),
            lambda: AnchoringResult.load(work / "missing.json"),
            lambda: AnchoringResult.load(files["png"]),
        ],
    }
    try:  # region assignment lives in adapters.regions (with siibra); tried where it is installed
        from siibra_anchor.adapters import regions  # noqa: F401

        cases["unknown parcellation"] = [
            lambda: _result_for_regions().assign_regions(parcellation="no-such-atlas"),
            lambda: _result_for_regions().assign_regions(parcellation=""),
        ]
    except ImportError:
        pass
    return cases


def _cli_cases(files: dict[str, Path], work: Path, main: Callable[[list[str]], int]) -> Case:
    """Run the CLI entry point ``main`` on bad input; each must print one line on stderr and exit non-zero."""
    broken = work / "broken.png"
    broken.write_bytes(files["png"].read_bytes()[:200])
    argvs = [
        ["anchor", str(work / "missing.png"), "--spacing-mm", "0.5"],
        ["anchor", str(broken), "--spacing-mm", "0.5"],
        ["anchor", str(files["png"].with_name("nospacing.png"))],
        ["anchor", str(files["png"]), "--spacing-mm", "-1"],
        ["anchor", str(files["png"]), "--space", "mars"],
        ["reference", "build", "--space", "colin27"],
        ["reference", "build", "--n-sections", "0"],
        ["demo", "--out", "/dev/null/demo"],
    ]
    c = Case("CLI", "subcommands on bad input", expected="one line on stderr, exit 2 (typed) / 1 (other)")
    bad = []
    for argv in argvs:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["--quiet", *argv])
        lines = [x for x in err.getvalue().splitlines() if x.strip() and not x.startswith("WARNING")]
        one = len(lines) == 1 and "Traceback" not in err.getvalue()
        c.outcomes[f"exit {rc}, one line" if one and rc else f"BAD exit {rc}, {len(lines)} lines"] += 1
        if not (one and rc):
            bad.append(" ".join(argv))
    c.ok = not bad
    c.note = "bad: " + "; ".join(bad) if bad else ""
    return c


# -- the report -------------------------------------------------------------------------------------------
def run_reliability(
    quick: bool = False, seed: int = 0, progress: bool = False, cli_main: Callable[[list[str]], int] | None = None
) -> dict[str, Any]:
    """Run every case; returns a report dict (``cases`` rows, ``ok``, command, machine, date).

    cli_main : the command line's entry point (``siibra_anchor.cli.main``), passed in by the command that runs
        the report; without it the CLI cases are left out (the library never imports the command line).
    """
    from PIL import Image

    t_start = time.perf_counter()
    cases: list[Case] = []
    n_fuzz = 40 if quick else 200
    n_damage = 12 if quick else 40
    saved_env = os.environ.get("SIIBRA_ANCHOR_CACHE")
    tiff_log = logging.getLogger("tifffile")  # it logs every damaged tag it meets; the outcome is what counts
    tiff_level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)
    with (
        tempfile.TemporaryDirectory(prefix="siibra-anchor-reliability-") as tmp,
        _restore_env(saved_env),
        contextlib.ExitStack() as stack,
    ):
        stack.callback(tiff_log.setLevel, tiff_level)
        work = Path(tmp)

        def step(msg: str) -> None:
            if progress:
                sys.stderr.write(f"reliability: {msg} ({time.perf_counter() - t_start:.0f} s)\n")

        step("faults")
        cases += _run_faults(work / "faults", quick)
        small_ref = fault_reference(work / "faults" / "corrupt")
        os.environ["SIIBRA_ANCHOR_CACHE"] = str(work / "cache")  # nothing below writes to the user's cache
        files = sample_files(work / "files", seed=seed)
        Image.open(files["png"]).save(files["png"].with_name("nospacing.png"))  # no pHYs chunk

        step("bad inputs")
        for kind, fns in bad_inputs(small_ref, files, work).items():
            c = Case("bad input", kind)
            for fn in fns:
                c.outcomes[outcome_of(fn)] += 1
            c.ok = "works" not in c.outcomes and not _untyped(c.outcomes)
            cases.append(c)
        if cli_main is not None:
            cases.append(_cli_cases(files, work, cli_main))

        step("damaged files")
        ref_dir = work / "ref.zarr"
        small_ref.save(ref_dir)
        targets = {**files, "reference-zarr": ref_dir}
        for i, (kind, path) in enumerate(targets.items()):
            c = Case("damaged file", kind, expected="typed error, or decodes")
            dest = work / "damaged" / f"x-{path.name}"
            dest.parent.mkdir(exist_ok=True)
            for d in damaged_variants(path, dest, n_damage, seed + i):
                c.outcomes[outcome_of(functools.partial(_read_any, kind, d))] += 1
            c.ok = not _untyped(c.outcomes) and (kind != "reference-zarr" or "works" not in c.outcomes)
            if kind == "reference-zarr":
                c.expected = "CorruptFileError (sha256 manifest)"
            elif "works" in c.outcomes:
                c.note = (
                    "decoded: the damage hit bytes the format does not checksum (raw pixels, padding, trailing data)"
                )
            cases.append(c)

        step("fuzzing")
        fuzz_dir = work / "fuzz"
        fuzz_dir.mkdir()
        for kind in ("png", "tiff", "nii", "nii.gz"):
            c = Case("fuzz", f"random bytes as .{kind}", expected="typed error")
            c.outcomes = fuzz_bytes(kind, n_fuzz // 4, seed, fuzz_dir)
            c.ok = not _untyped(c.outcomes)
            cases.append(c)
        try:
            for name in fuzz_targets():
                c = Case("fuzz", f"hypothesis: {name}", expected="works or typed error")
                c.outcomes = run_fuzz(name, n_fuzz, seed)
                c.ok = not _untyped(c.outcomes)
                cases.append(c)
        except ImportError as exc:
            cases.append(Case("fuzz", "hypothesis", ok=False, note=f"{exc}; pip install 'siibra-anchor[test]'"))

        step("no network")
        cases += _no_network_cases()

        if not quick:
            step("non-brain images")
            if saved_env is not None:  # the user's cache holds the MNI152 reference; the temp one does not
                os.environ["SIIBRA_ANCHOR_CACHE"] = saved_env
            else:
                os.environ.pop("SIIBRA_ANCHOR_CACHE", None)
            cases += _low_confidence_cases(seed)

    rows = [
        {
            "group": c.group,
            "kind": c.kind,
            "count": c.count,
            "outcome": c.outcome_text(),
            "expected": c.expected,
            "ok": bool(c.ok),
            "note": c.note,
        }
        for c in cases
    ]
    return {
        "command": "siibra-anchor reliability" + (" --quick" if quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "seed": seed,
        "total_s": time.perf_counter() - t_start,
        "cases": rows,
        "ok": all(r["ok"] for r in rows),
    }


@contextlib.contextmanager
def _restore_env(value: str | None) -> Iterator[None]:
    try:
        yield
    finally:
        if value is None:
            os.environ.pop("SIIBRA_ANCHOR_CACHE", None)
        else:
            os.environ["SIIBRA_ANCHOR_CACHE"] = value


def _low_confidence_cases(seed: int) -> list[Case]:
    import siibra_anchor as sa

    from ..errors import LowConfidenceWarning
    from .simulate import simulate_section

    ref = sa.Reference.from_space("mni152")
    cases = []
    inputs = non_brain_sections(seed)
    inputs["human brain (control)"] = simulate_section(
        volume=FAULT_VOLUME, orientation="coronal", rotation_deg=30.0, tilt_deg=6.0, spacing_mm=0.5, seed=seed
    ).section
    for name, sec in inputs.items():
        control = name.startswith("human")
        c = Case(
            "not a human brain",
            name,
            expected="confidence >= 0.5, no warning" if control else "low confidence + warning, or typed error",
        )
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                res = sa.anchor(sec, reference=ref, seed=seed)
            except AnchorError as exc:
                c.outcomes[type(exc).__name__] += 1
                c.ok = not control
                cases.append(c)
                continue
        warned = any(issubclass(x.category, LowConfidenceWarning) for x in w)
        c.outcomes[f"confidence {res.confidence:.2f}" + (", warning" if warned else "")] += 1
        c.ok = (res.confidence >= 0.5 and not warned) if control else (res.confidence < 0.5 and warned)
        cases.append(c)
    return cases


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table of a report."""
    lines = [f"{'group':<18} {'kind':<52} {'n':>5}  {'ok':<4} outcome"]
    for r in report["cases"]:
        lines.append(
            f"{r['group']:<18} {r['kind'][:52]:<52} {r['count']:>5}  {'yes' if r['ok'] else 'NO':<4} {r['outcome']}"
        )
    lines.append(f"{'all cases pass' if report['ok'] else 'SOME CASES FAIL'} ({report['total_s']:.0f} s)")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    """docs/reliability.md content: how it was made, what was tried, what happened."""
    m = report["machine"]
    n = sum(r["count"] for r in report["cases"])
    out = [
        "# Reliability",
        "",
        f"Generated by `{report['command']} --out docs/reliability.md` on {report['date']} "
        f"({m['platform']}, Python {m['python']}, {m['cpus']} CPUs) in {report['total_s']:.0f} s: "
        f"{n} inputs and faults in {len(report['cases'])} kinds, "
        + ("**every kind passed**." if report["ok"] else "**some kinds FAILED** (see the ok column)."),
        "",
        "Outcome names are the typed errors of `siibra_anchor.errors` (every one a subclass of `AnchorError`",
        "and of the matching builtin); `works` means the input was accepted; `UNTYPED <class>` would be a",
        "defect (any other exception). `x N` counts how many inputs of that kind ended that way.",
        "",
        "| group | kind | tried | outcome | expected | ok | note |",
        "|---|---|---:|---|---|---|---|",
    ]
    for r in report["cases"]:
        out.append(
            f"| {r['group']} | {r['kind']} | {r['count']} | {r['outcome']} | {r['expected']} | "
            f"{'yes' if r['ok'] else '**NO**'} | {r['note']} |"
        )
    out += [
        "",
        "## What the groups mean",
        "",
        "- **bad input**: public entry points (`Section`, `Section.from_file`, `anchor`, `anchor_series`,",
        "  `Reference.from_space/from_volume/from_sections/load`, `AnchoringResult.load/from_dict`,",
        "  `build_encoder/load_encoder`) called with each kind of bad value.",
        "- **CLI**: `siibra-anchor` subcommands on bad input; a typed error is one line and exit 2, any other",
        "  error one line and exit 1 (`--debug` shows the traceback).",
        "- **damaged file**: a valid file of each format, damaged N times (truncated at a random length, one",
        "  flipped bit, 16 overwritten bytes, emptied; for zarr stores one random file of the store), then read.",
        "  A damaged reference store is always refused: its files are checked against a sha256 manifest.",
        "- **fuzz**: random bytes named like each format, and hypothesis-generated arrays/spacings for",
        "  `Section`, mutated result dicts for `AnchoringResult.from_dict`, random and degenerate point sets",
        "  (NaN, inf, too few, coincident, collinear, zero weights) for `similarity_fit`/`affine_fit`.",
        "- **faults**: a reference build killed with SIGKILL while embedding and while writing, a built cache",
        "  entry damaged in several ways, several processes building the same entry at once (file lock), a lock",
        "  held longer than `SIIBRA_ANCHOR_LOCK_TIMEOUT`.",
        "- **no network**: every socket connect and DNS lookup of the process fails (as on a machine without",
        "  network); the time is until the typed error.",
        "- **not a human brain** (full run only): images that are not a human brain section, anchored to",
        "  MNI152; a warning is `LowConfidenceWarning` plus a logged line. A correctly anchored human section",
        "  is the control. The calibration of confidence over the simulated benchmark set is in",
        "  [benchmarks.md](benchmarks.md) (confidence of successes vs failures).",
        "",
        "## Using it",
        "",
        "Catch every refusal of the library with one class, or the builtin a caller would expect:",
        "",
        "```python",
        "import numpy as np, siibra_anchor as sa",
        "from siibra_anchor.errors import AnchorError, SpacingError",
        "",
        "try:",
        "    sa.Section(np.random.rand(64, 64), spacing_mm=0)",
        "except SpacingError as exc:          # also a ValueError and an AnchorError",
        "    print(exc)                       # says the value and what to pass",
        "```",
        "",
        "A placement with confidence below 0.5 logs a warning and emits `LowConfidenceWarning`; make it an",
        "error in a pipeline that must not keep doubtful placements:",
        "",
        "```python",
        "import warnings",
        "from siibra_anchor.errors import LowConfidenceWarning",
        "",
        'warnings.simplefilter("error", LowConfidenceWarning)   # sa.anchor(...) now raises instead',
        "```",
        "",
        "Reference caches (`SIIBRA_ANCHOR_CACHE`, default the user cache folder) are written to a temporary",
        "folder and renamed, carry a sha256 manifest that every load checks (a damaged entry is rebuilt with a",
        "`CorruptCacheWarning`), and are built under a file lock: a second process building the same entry",
        "waits (up to `SIIBRA_ANCHOR_LOCK_TIMEOUT` seconds, default 1800, then `CacheLockTimeoutError`) and",
        "loads it. `sa.Reference.load(path, verify=True)` checks a saved reference yourself.",
        "",
        "On the command line a typed error is one line and exit code 2, anything else one line and exit 1;",
        "`siibra-anchor --debug ...` shows the traceback. Regenerate this page (about 5-10 minutes on 2 cores;",
        "`--quick` skips the non-brain anchorings and runs fewer fuzz examples):",
        "",
        "```",
        "siibra-anchor reliability --out docs/reliability.md",
        "```",
        "",
    ]
    return "\n".join(out)
