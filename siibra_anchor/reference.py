"""The :class:`Reference`: patches of known 3D position in a space, with their embeddings.

A reference is built by cutting *reference sections* (planes through a template volume, or histological
sections already registered to the space), sampling patches on their tissue, and encoding them. Each
reference patch carries its centre in world mm. Reference density (how many sections, which
orientations) is a parameter; the method's precision depends on it.

Built references are cached (zarr) under the user cache folder, keyed by everything that changes them:
space, volume content, sampling parameters, encoder hash and format version.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .cache import file_sha256
from .errors import CorruptFileError, EmptyMaskError, InvalidReferenceError, SchemaVersionError
from .patches import PatchSpec, extract_patches, grid_centres, normalize_intensity
from .planes import AXIS_OF_PLANE, CANONICAL_PLANES, cut_plane, pixel_to_world, plane_affine, world_bbox

__all__ = ["Reference", "volume_brain_mask", "REFERENCE_FORMAT_VERSION"]

log = logging.getLogger(__name__)

REFERENCE_FORMAT_VERSION = 1


def volume_brain_mask(data: NDArray) -> NDArray:
    """Brain (non-background) mask of a template volume: voxels above 5% of the 99th percentile."""
    d = np.asarray(data, np.float32)
    pos = d[d > 0]
    if pos.size == 0:
        raise EmptyMaskError("volume has no positive voxels; nothing to build a reference from")
    return d > 0.05 * float(np.percentile(pos, 99))


def _count(v: Any) -> int:
    """A number of reference sections, or :class:`InvalidReferenceError`."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidReferenceError(f"n_sections must be an integer (or a dict of integers per axis), got {v!r}")
    return int(v)


def _check_stride(stride_px: Any) -> None:
    if isinstance(stride_px, bool) or not isinstance(stride_px, (int, np.integer)) or stride_px < 1:
        raise InvalidReferenceError(f"stride_px must be a positive integer number of pixels, got {stride_px!r}")


@dataclass
class Reference:
    """Reference patches of known 3D position in a space.

    Attributes
    ----------
    space : canonical space key ("mni152", "colin27", ..., or "custom:<name>").
    spec : :class:`PatchSpec` the patches were cut with (sections must be cut the same way).
    centres_mm : (N, 3) float64 world mm of each patch centre.
    embeddings : (N, D) float32 L2-normalised encoder outputs.
    plane_ids : (N,) int32 index into ``planes`` of the reference section each patch comes from.
    pixels : (N, 2) float32 (row, col) of the patch centre in that reference section (working pixels).
    planes : (S, 4, 4) float64 affines of the reference sections (working pixel -> mm).
    encoder_hash : :func:`siibra_anchor.encoders.encoder_hash` of the encoder that made ``embeddings``.
    params : how the reference was built (for the cache key and for reports).
    volume, volume_affine : optional (I, J, K) float32 template scaled to [0, 1] (background 0) and its
        voxel->mm affine; used to compare a section with the template on a candidate plane.
    """

    space: str
    spec: PatchSpec
    centres_mm: NDArray
    embeddings: NDArray
    plane_ids: NDArray
    pixels: NDArray
    planes: NDArray
    encoder_hash: str
    params: dict[str, Any] = field(default_factory=dict)
    volume: NDArray | None = None
    volume_affine: NDArray | None = None

    def __post_init__(self) -> None:
        n = len(self.centres_mm)
        if n == 0:
            raise InvalidReferenceError("reference has no patches; add sections or lower min_tissue")
        for name in ("embeddings", "plane_ids", "pixels"):
            if len(getattr(self, name)) != n:
                raise InvalidReferenceError(
                    f"reference arrays disagree: {name} has {len(getattr(self, name))} rows, centres have {n}"
                )
        self._tree = None
        self._cache: dict[Any, Any] = {}

    # -- properties -------------------------------------------------------------------------------
    @property
    def n_patches(self) -> int:
        return int(len(self.centres_mm))

    @property
    def n_sections(self) -> int:
        return int(len(self.planes))

    @property
    def tree(self):  # scipy cKDTree over centres_mm, built once
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.centres_mm)
        return self._tree

    def tree_of(self, planes: NDArray) -> tuple[Any, NDArray | None]:
        """A KD-tree over the centres of the patches of the reference sections ``planes`` ((S,) bool) and
        those patches' indices, ascending (tree position ``i`` is patch ``index[i]``; None for the whole
        tree, :attr:`tree`, which most of the sections get). The guided search asks for the sections near
        the placement's plane, the same few sets again and again: the last eight are kept."""
        planes = np.asarray(planes, bool)
        if planes.mean() > 0.8:
            return self.tree, None
        key = ("tree_of", planes.tobytes())
        hit = self._cache.get(key)
        if hit is None:
            from scipy.spatial import cKDTree

            old = [k for k in list(self._cache) if k[0] == "tree_of"]  # a copy: threads may share a reference
            for k in old[: max(0, len(old) - 7)]:
                self._cache.pop(k, None)
            index = np.flatnonzero(planes[self.plane_ids])
            hit = self._cache[key] = (cKDTree(self.centres_mm[index]), index)
        return hit

    def __repr__(self) -> str:
        return (
            f"Reference(space={self.space!r}, n_sections={self.n_sections}, n_patches={self.n_patches}, "
            f"dim={self.embeddings.shape[1]}, encoder={self.encoder_hash})"
        )

    def coarse_index(self, dim: int = 48) -> tuple[NDArray, NDArray, NDArray]:
        """What the first, global search uses: (mask (N,) bool, projection (D, d), projected refs (M, d)).

        Every other reference section per orientation (plane parity) and a PCA projection of the
        embeddings to ``dim`` components make the brute-force search ~10x cheaper; the guided search
        that follows uses every patch and the full embeddings.
        """
        key = ("coarse", dim)
        if key not in self._cache:
            mask = (self.plane_ids % 2) == 0
            if mask.sum() < 100:
                mask = np.ones(self.n_patches, bool)
            e = self.embeddings[mask]
            d = min(int(dim), e.shape[1])
            rng = np.random.default_rng(0)
            sub = e[rng.choice(len(e), min(len(e), 8000), replace=False)]
            _, _, vt = np.linalg.svd(sub - sub.mean(axis=0), full_matrices=False)
            proj = vt[:d].T.astype(np.float32)
            pe = e @ proj
            pe /= np.maximum(np.linalg.norm(pe, axis=1, keepdims=True), 1e-12)
            self._cache[key] = (mask, proj, pe.astype(np.float32))
        return self._cache[key]

    def smoothed_volume(self, sigma_vox: float) -> NDArray | None:
        """The template volume smoothed by a Gaussian of ``sigma_vox`` voxels (cached)."""
        if self.volume is None:
            return None
        key = ("smooth", float(sigma_vox))
        if key not in self._cache:
            from scipy import ndimage

            self._cache[key] = ndimage.gaussian_filter(self.volume, sigma_vox) if sigma_vox > 0 else self.volume
        return self._cache[key]

    def brain_volume(self) -> NDArray | None:
        """A soft [0, 1] mask of the template's brain on its grid (tissue and the cavities it encloses,
        smoothed by one voxel; cached); None without a volume."""
        if self.volume is None:
            return None
        key = ("brain",)
        if key not in self._cache:
            from scipy import ndimage

            solid = ndimage.binary_fill_holes(ndimage.binary_closing(self.volume > 0, iterations=2))
            self._cache[key] = ndimage.gaussian_filter(solid.astype(np.float32), 1.0)
        return self._cache[key]

    @property
    def plane_axes(self) -> NDArray:
        """(S, 3, 2) unit in-plane row/column directions of each reference section."""
        a = self.planes[:, :3, :2]
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    @property
    def plane_normals(self) -> NDArray:
        """(S, 3) unit normals ``cross(row dir, col dir)`` of each reference section."""
        axes = self.plane_axes
        n = np.cross(axes[:, :, 0], axes[:, :, 1])
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_space(
        cls,
        space: Any = "mni152",
        n_sections: int | dict[str, int] = 30,
        axis: str | Sequence[str] = ("coronal", "sagittal", "axial"),
        encoder: Any = None,
        spec: PatchSpec | None = None,
        stride_px: int = 4,
        cache: bool = True,
        progress: bool = False,
    ) -> Reference:
        """Reference for a named space. ``"mni152"`` is embedded (offline); others go through siibra.

        ``n_sections`` reference planes per orientation (or a dict per orientation), cut along ``axis``.
        """
        if isinstance(space, str) and space.startswith("custom:"):
            from .errors import SpaceUnavailableError

            raise SpaceUnavailableError(
                f"space {space!r} has no known template; build it with sa.Reference.from_volume(path, space={space!r})"
            )
        # names, aliases and siibra Space objects resolve locally or through siibra; the template of
        # "mni152" is the embedded file, others are fetched through siibra once (offline: SpaceUnavailableError)
        from .extensions import extension

        fetch_template = extension("fetch_template")
        key = extension("resolve_space")(space)
        path = fetch_template(key)
        kw = dict(n_sections=n_sections, axis=axis, encoder=encoder, spec=spec, stride_px=stride_px)
        try:
            return cls.from_volume(path, space=key, cache=cache, progress=progress, **kw)
        except CorruptFileError as exc:
            from .cache import cache_dir

            if cache_dir("templates") not in Path(path).parents:
                raise
            # a damaged downloaded template: fetch it again once
            log.warning("cached template %s is unreadable (%s); fetching it again", path, exc)
            Path(path).unlink(missing_ok=True)
            return cls.from_volume(fetch_template(key), space=key, cache=cache, progress=progress, **kw)

    @classmethod
    def from_volume(
        cls,
        volume: str | PathLike[str] | Any,
        space: str,
        n_sections: int | dict[str, int] = 30,
        axis: str | Sequence[str] = ("coronal", "sagittal", "axial"),
        encoder: Any = None,
        spec: PatchSpec | None = None,
        stride_px: int = 4,
        cache: bool = True,
        progress: bool = False,
    ) -> Reference:
        """Build (or load from cache) a reference by cutting planes through a 3D template.

        Parameters
        ----------
        volume : path of a NIfTI volume, or a nibabel image; world coordinates of the space (mm).
        space : space key it belongs to (``"custom:<name>"`` for your own).
        n_sections : reference planes per orientation, evenly spread over the brain (trimmed 4% at each end).
        axis : orientations among "coronal", "sagittal", "axial".
        stride_px : patch grid stride on reference planes, in working pixels.
        """
        from .encoders import encoder_hash, load_default_encoder
        from .spaces import canonical_space
        from .templates import load_volume

        spec = spec or PatchSpec()
        axes = [axis] if isinstance(axis, str) else list(axis)
        for a in axes:
            if a not in CANONICAL_PLANES:
                raise InvalidReferenceError(f"unknown axis {a!r}; use 'coronal', 'sagittal' or 'axial'")
        try:
            counts = {a: _count(n_sections[a] if isinstance(n_sections, dict) else n_sections) for a in axes}
        except KeyError as exc:
            raise InvalidReferenceError(f"n_sections {n_sections!r} has no count for axis {exc}") from exc
        if not counts or any(c < 1 for c in counts.values()):
            raise InvalidReferenceError(f"n_sections must be >= 1 per axis (and axis not empty), got {counts}")
        _check_stride(stride_px)
        space_key = space if str(space).startswith("custom:") else canonical_space(space)
        enc = encoder if encoder is not None else load_default_encoder()
        if isinstance(volume, (str, PathLike)):
            vpath = Path(volume)
            if not vpath.is_file():
                from .errors import SectionFileNotFoundError

                raise SectionFileNotFoundError(f"template volume not found: {vpath}")
            data, vaff = load_volume(vpath)
            vol_id = file_sha256(vpath)
            if min(data.shape) < 8:
                raise InvalidReferenceError(
                    f"volume {vpath} has shape {data.shape}: a slice, not a 3D template; for registered 2D "
                    "sections use sa.Reference.from_sections([(section, affine), ...], space=...)"
                )
        else:
            if not (hasattr(volume, "dataobj") and hasattr(volume, "affine")):
                raise InvalidReferenceError(
                    f"volume must be a NIfTI path or a nibabel image, got {type(volume).__name__}"
                )
            data = np.asarray(volume.dataobj, np.float32)
            vaff = np.asarray(volume.affine, float)
            if (
                data.ndim != 3
                or min(data.shape) < 8
                or not np.all(np.isfinite(data))
                or vaff.shape != (4, 4)
                or not np.all(np.isfinite(vaff))
            ):
                raise InvalidReferenceError(
                    f"volume must be 3D (>= 8 voxels a side) and finite with a finite (4, 4) affine; got data {data.shape}, "
                    f"affine {vaff.shape}; pass a 3D template image"
                )
            vol_id = hashlib.sha256(data.tobytes() + vaff.tobytes()).hexdigest()
        params = {
            "format": REFERENCE_FORMAT_VERSION,
            "space": space_key,
            "volume_sha256": vol_id,
            "spec": spec.to_dict(),
            "counts": counts,
            "stride_px": int(stride_px),
            "encoder": encoder_hash(enc),
            "kind": "volume",
        }
        from .cache import cache_dir, cache_key

        path = cache_dir("references") / f"{space_key.replace(':', '_')}-{cache_key(params)}.zarr"
        if not cache:
            return cls._build_from_volume(data, vaff, space_key, counts, spec, stride_px, enc, params, progress)
        from .cache import MANIFEST_NAME, cache_lock, remove_stale_temps

        # one process builds an entry, the others wait for the lock and then load what it saved
        with cache_lock(path):
            for stale in remove_stale_temps(path):
                log.warning("removed %s left by an interrupted reference build", stale)
            if path.exists() and not (path / MANIFEST_NAME).is_file():
                log.info("cached reference %s predates checksum manifests; rebuilding", path)
            elif path.exists():
                try:
                    ref = cls.load(path, verify=True)
                    if ref.params == params:
                        log.info("loaded cached reference %s", path)
                        return ref
                    log.warning("cached reference %s has other parameters; rebuilding", path)
                except (CorruptFileError, SchemaVersionError, InvalidReferenceError) as exc:
                    import warnings

                    from .errors import CorruptCacheWarning

                    log.warning("cached reference %s is unusable (%s); rebuilding", path, exc)
                    warnings.warn(f"cached reference {path} is unusable ({exc}); rebuilt", CorruptCacheWarning, 2)
            log.info("building reference %s", path)
            ref = cls._build_from_volume(data, vaff, space_key, counts, spec, stride_px, enc, params, progress)
            ref.save(path)
        return ref

    @classmethod
    def _build_from_volume(cls, data, vaff, space_key, counts, spec, stride_px, enc, params, progress) -> Reference:
        from .encoders import embed_patches, encoder_hash

        mask3 = volume_brain_mask(data)
        vol_norm = normalize_intensity(data, mask3)
        lo, hi = world_bbox(mask3, vaff)
        centre = (lo + hi) / 2.0
        margin = spec.size_px // 2 * spec.spacing_mm
        planes: list[NDArray] = []
        patches: list[NDArray] = []
        pix: list[NDArray] = []
        pids: list[NDArray] = []
        jobs = [(a, k) for a in counts for k in range(counts[a])]
        it: Iterable = jobs
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(jobs, desc="reference sections", unit="plane")
        for a, k in it:
            ax = AXIS_OF_PLANE[a]
            span = hi[ax] - lo[ax]
            pos = lo[ax] + span * (0.04 + 0.92 * (k + 0.5) / counts[a])
            row_dir, col_dir = CANONICAL_PLANES[a]
            in_r, in_c = int(np.argmax(np.abs(row_dir))), int(np.argmax(np.abs(col_dir)))
            h = int(np.ceil((hi[in_r] - lo[in_r] + 2 * margin) / spec.spacing_mm)) + 1
            w = int(np.ceil((hi[in_c] - lo[in_c] + 2 * margin) / spec.spacing_mm)) + 1
            c = centre.copy()
            c[ax] = pos
            aff = plane_affine(c, row_dir, col_dir, spec.spacing_mm, (h, w))
            raw = cut_plane(data, vaff, aff, (h, w))
            pmask = cut_plane(mask3.astype(np.float32), vaff, aff, (h, w)) > 0.5
            if pmask.sum() < 0.05 * spec.size_px**2:
                continue
            img = normalize_intensity(raw, pmask)
            cen = grid_centres(pmask, spec, stride_px=stride_px)
            if len(cen) == 0:
                continue
            patches.append(extract_patches(img, cen, spec.size_px)[:, 0])
            pix.append(cen)
            pids.append(np.full(len(cen), len(planes), np.int32))
            planes.append(aff)
        if not planes:
            raise InvalidReferenceError("no reference plane holds tissue; check the volume and its affine")
        all_p = np.concatenate(patches)
        emb = embed_patches(enc, all_p)
        pids_a = np.concatenate(pids)
        pix_a = np.concatenate(pix)
        planes_a = np.stack(planes)
        centres = np.concatenate([pixel_to_world(planes_a[i], p[:, 0], p[:, 1]) for i, p in enumerate(pix)])
        return cls(
            space=space_key,
            spec=spec,
            centres_mm=centres,
            embeddings=emb.astype(np.float32),
            plane_ids=pids_a,
            pixels=pix_a.astype(np.float32),
            planes=planes_a,
            encoder_hash=encoder_hash(enc),
            params=params,
            # stored as float16 (see save): round now so a freshly built reference and its cached copy
            # anchor identically
            volume=vol_norm.astype(np.float16).astype(np.float32),
            volume_affine=np.asarray(vaff, float),
        )

    @classmethod
    def from_sections(
        cls,
        sections: Sequence[tuple[Any, Any]],
        space: str,
        encoder: Any = None,
        spec: PatchSpec | None = None,
        stride_px: int = 4,
    ) -> Reference:
        """Reference from histological sections already registered to the space.

        sections : sequence of ``(Section, affine)``; ``affine`` (4, 4) maps the section's pixel
        ``(row, col, 0, 1)`` to world mm (the :class:`~siibra_anchor.result.AnchoringResult` convention).
        """
        from .encoders import embed_patches, encoder_hash, load_default_encoder
        from .section import Section
        from .spaces import canonical_space

        spec = spec or PatchSpec()
        _check_stride(stride_px)
        enc = encoder if encoder is not None else load_default_encoder()
        if not isinstance(sections, Sequence) or isinstance(sections, (str, bytes)):
            raise InvalidReferenceError(
                f"from_sections needs a list of (Section, affine) pairs, got {type(sections).__name__}"
            )
        if len(sections) == 0:
            raise InvalidReferenceError("from_sections needs at least one (Section, affine) pair")
        planes: list[NDArray] = []
        patches: list[NDArray] = []
        pix: list[NDArray] = []
        pids: list[NDArray] = []
        for i, item in enumerate(sections):
            try:
                sec, aff = item
                aff = np.asarray(aff, float)
            except (TypeError, ValueError) as exc:
                raise InvalidReferenceError(f"item {i} is not a (Section, affine) pair: {item!r}") from exc
            if not isinstance(sec, Section):
                raise InvalidReferenceError(f"item {i} must hold a siibra_anchor.Section, got {type(sec).__name__}")
            if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
                raise InvalidReferenceError(f"affine of item {i} must be a finite (4, 4) matrix, got {aff.shape}")
            if abs(float(np.linalg.det(aff))) < 1e-12:
                raise InvalidReferenceError(
                    f"affine of item {i} is singular; its third column must be the section normal x thickness"
                )
            img, msk, scale = sec.at_spacing(spec.spacing_mm)
            waff = aff @ np.diag([scale[0], scale[1], 1.0, 1.0])
            cen = grid_centres(msk, spec, stride_px=stride_px)
            if len(cen) == 0:
                log.warning("section %s holds no patch at %s mm/px; skipped", sec.name, spec.spacing_mm)
                continue
            patches.append(extract_patches(normalize_intensity(img, msk), cen, spec.size_px)[:, 0])
            pix.append(cen)
            pids.append(np.full(len(cen), len(planes), np.int32))
            planes.append(waff)
        if not planes:
            raise InvalidReferenceError("no section holds a patch; sections are too small or masks empty")
        planes_a = np.stack(planes)
        centres = np.concatenate([pixel_to_world(planes_a[i], p[:, 0], p[:, 1]) for i, p in enumerate(pix)])
        space_key = space if str(space).startswith("custom:") else canonical_space(space)
        return cls(
            space=space_key,
            spec=spec,
            centres_mm=centres,
            embeddings=embed_patches(enc, np.concatenate(patches)).astype(np.float32),
            plane_ids=np.concatenate(pids),
            pixels=np.concatenate(pix).astype(np.float32),
            planes=planes_a,
            encoder_hash=encoder_hash(enc),
            params={
                "format": REFERENCE_FORMAT_VERSION,
                "space": space_key,
                "kind": "sections",
                "n_sections": len(planes),
                "spec": spec.to_dict(),
                "stride_px": int(stride_px),
            },
        )

    def subset(self, keep: NDArray) -> Reference:
        """A reference restricted to the patches where ``keep`` (N,) bool is true (planes kept as is)."""
        k = np.asarray(keep, bool)
        return Reference(
            space=self.space,
            spec=self.spec,
            centres_mm=self.centres_mm[k],
            embeddings=self.embeddings[k],
            plane_ids=self.plane_ids[k],
            pixels=self.pixels[k],
            planes=self.planes,
            encoder_hash=self.encoder_hash,
            params={**self.params, "subset": int(k.sum())},
            volume=self.volume,
            volume_affine=self.volume_affine,
        )

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | PathLike[str]) -> Path:
        """Write the reference as a zarr folder (atomically: temp folder, then rename) with a sha256 manifest."""
        import json

        import zarr

        from .cache import atomic_dir, write_manifest

        path = Path(path)
        with atomic_dir(path) as tmp:
            g: Any = zarr.open_group(str(tmp), mode="w")
            g.attrs.update(
                {
                    "siibra_anchor_reference": REFERENCE_FORMAT_VERSION,
                    "space": self.space,
                    "spec": self.spec.to_dict(),
                    "encoder_hash": self.encoder_hash,
                    "params": json.loads(json.dumps(self.params, default=str)),
                }
            )
            g.create_array("centres_mm", data=self.centres_mm.astype(np.float64))
            g.create_array("embeddings", data=self.embeddings.astype(np.float32))
            g.create_array("plane_ids", data=self.plane_ids.astype(np.int32))
            g.create_array("pixels", data=self.pixels.astype(np.float32))
            g.create_array("planes", data=self.planes.astype(np.float64))
            if self.volume is not None and self.volume_affine is not None:
                g.create_array("volume", data=self.volume.astype(np.float16), chunks=(64, 64, 64))
                g.create_array("volume_affine", data=np.asarray(self.volume_affine, np.float64))
            write_manifest(tmp)
        return path

    @classmethod
    def load(cls, path: str | PathLike[str], verify: bool | None = None) -> Reference:
        """Read a reference written by :meth:`save`.

        ``verify``: check every file against the folder's sha256 manifest (None: when it has one; True:
        a missing manifest is an error). A damaged reference raises :class:`CorruptFileError`.
        """
        import zarr

        from .cache import MANIFEST_NAME, verify_manifest

        path = Path(path)
        if not path.exists():
            from .errors import SectionFileNotFoundError

            raise SectionFileNotFoundError(f"reference not found: {path}")
        if verify or (verify is None and (path / MANIFEST_NAME).is_file()):
            verify_manifest(path)
        try:
            warnings.filterwarnings("ignore", message=f".*{MANIFEST_NAME}.*")  # zarr: "not a component"
            g: Any = zarr.open_group(str(path), mode="r")
            attrs: dict[str, Any] = dict(g.attrs)
            ver = attrs.get("siibra_anchor_reference")
            if ver is None:
                raise CorruptFileError(f"{path} is not a siibra-anchor reference (no format attribute)")
            if int(ver) > REFERENCE_FORMAT_VERSION:
                raise SchemaVersionError(
                    f"reference {path} has format {ver}, newer than this siibra-anchor "
                    f"({REFERENCE_FORMAT_VERSION}); upgrade siibra-anchor or rebuild the reference"
                )
            keys = set(g.array_keys())
            vol = np.asarray(g["volume"][:], np.float32) if "volume" in keys else None
            vaff = np.asarray(g["volume_affine"][:], float) if "volume_affine" in keys else None
            return cls(
                space=attrs["space"],
                spec=PatchSpec(**attrs["spec"]),
                centres_mm=np.asarray(g["centres_mm"][:], float),
                embeddings=np.asarray(g["embeddings"][:], np.float32),
                plane_ids=np.asarray(g["plane_ids"][:], np.int32),
                pixels=np.asarray(g["pixels"][:], np.float32),
                planes=np.asarray(g["planes"][:], float),
                encoder_hash=attrs["encoder_hash"],
                params=dict(attrs.get("params", {})),
                volume=vol,
                volume_affine=vaff,
            )
        except (CorruptFileError, SchemaVersionError, InvalidReferenceError):
            raise
        except Exception as exc:  # zarr/json/numcodecs raise many kinds on damaged stores
            raise CorruptFileError(f"cannot read reference {path}: {exc}; delete it and rebuild") from exc
