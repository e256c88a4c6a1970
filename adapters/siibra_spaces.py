"""Reference spaces through siibra: names, aliases and Space objects -> canonical keys; templates -> References.

* :func:`resolve_space` turns "colin27", "MNI Colin 27", "icbm 2009c", a siibra ``Space`` object, ... into
  the canonical key ("mni152", "colin27", "bigbrain") used everywhere in siibra-anchor.
* :func:`fetch_template` fetches a space's template through siibra (bounded by a timeout), stores it once
  as NIfTI in the cache (``templates/``) and returns its path; "mni152" is the embedded file and never
  needs the network.
* :func:`reference_for_space` builds the :class:`~siibra_anchor.reference.Reference` of any space from
  that template (``Reference.from_space`` calls it for non-embedded spaces).

Offline, every space except "mni152" raises :class:`SpaceUnavailableError` within seconds, saying how to
pass a local template instead (``Reference.from_volume(path, space=...)``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from siibra_anchor.cache import atomic_file, cache_dir, cache_key
from siibra_anchor.errors import NetworkError, SpaceUnavailableError, UnknownSpaceError
from siibra_anchor.spaces import EMBEDDED_SPACES, SPACE_IDS, SPACE_NAMES, canonical_space

__all__ = [
    "SPACE_IDS",
    "WHOLE_HEAD_SPACES",
    "resolve_space",
    "siibra_space",
    "feasible_resolution",
    "fetch_volume",
    "fetch_template",
    "template_cache_path",
    "reference_for_space",
]

log = logging.getLogger(__name__)

#: resolution (mm) at which templates served as image pyramids (BigBrain) are fetched
PYRAMID_RESOLUTION_MM = 0.32


def _how_to_supply(key: str) -> str:
    return (
        f"supply the template of {key!r} yourself: sa.Reference.from_volume('template.nii.gz', space={key!r}), "
        f"then sa.anchor(section, reference=ref)"
    )


def _key_of_siibra_space(sp: Any) -> str | None:
    sid = getattr(sp, "id", None)
    for key, i in SPACE_IDS.items():
        if sid == i:
            return key
    try:
        return canonical_space(getattr(sp, "name", ""))
    except UnknownSpaceError:
        return None


def resolve_space(space: Any, online: bool | None = None, timeout_s: float = 30.0) -> str:
    """Canonical key of a space name, alias, siibra ``Space`` object or siibra space id.

    Known names and aliases resolve locally (no network). Any other string is looked up in siibra's space
    registry (online, bounded by ``timeout_s``); it must be one of the volumetric spaces siibra-anchor
    supports (:data:`SPACE_IDS`). Raises :class:`UnknownSpaceError` otherwise.
    """
    if not isinstance(space, str) and hasattr(space, "name"):
        key = _key_of_siibra_space(space)
        if key is None:
            raise UnknownSpaceError(
                f"siibra space {space.name!r} is not supported; use one of {sorted(SPACE_IDS)} or your own template "
                "with sa.Reference.from_volume(path, space='custom:<name>')"
            )
        return key
    if isinstance(space, str):
        for key, sid in SPACE_IDS.items():
            if space == sid:
                return key
    try:
        return canonical_space(space)
    except UnknownSpaceError as local_exc:
        from siibra_anchor.net import is_online

        if online is False or (online is None and not is_online()):
            raise
        try:
            sp = siibra_space(space, online=True, timeout_s=timeout_s)
        except (SpaceUnavailableError, NetworkError):
            raise local_exc from None
        key = _key_of_siibra_space(sp)
        if key is None:
            raise UnknownSpaceError(
                f"siibra resolves {space!r} to {sp.name!r}, which siibra-anchor does not support; use one of "
                f"{sorted(SPACE_IDS)} or sa.Reference.from_volume(path, space='custom:<name>')"
            ) from None
        return key


def siibra_space(space: Any, online: bool | None = None, timeout_s: float = 30.0) -> Any:
    """The siibra ``Space`` object of ``space`` (a key, name or Space), from the active siibra configuration.

    Offline (no network, or ``online=False``) the local configuration only knows "mni152"; other spaces
    raise :class:`SpaceUnavailableError`.
    """
    from siibra_anchor.net import call_with_timeout, is_online

    from .siibra_config import get_siibra, siibra_mode

    if not isinstance(space, str) and hasattr(space, "get_template"):
        return space
    try:
        key: str | None = canonical_space(space)
    except UnknownSpaceError:
        key = None
    if siibra_mode() != "local":  # a configuration the user chose is used as it is
        if online is None:
            online = is_online()
        if not online and key not in EMBEDDED_SPACES:
            raise SpaceUnavailableError(
                f"space {space!r} needs the network (siibra's servers are not reachable) and only "
                f"{list(EMBEDDED_SPACES)} is embedded; {_how_to_supply(str(key or space))}"
            )
    try:
        siibra, mode = get_siibra(online=online, timeout_s=timeout_s)
    except NetworkError as exc:
        raise SpaceUnavailableError(
            f"space {space!r} needs siibra online ({exc}); {_how_to_supply(str(key or space))}"
        ) from exc
    spec = SPACE_IDS.get(key, space) if key else space
    try:
        return call_with_timeout(siibra.spaces.get, spec, timeout_s=timeout_s, what=f"resolving space {space!r}")
    except NetworkError as exc:
        raise SpaceUnavailableError(
            f"siibra did not answer for space {space!r} ({exc}); {_how_to_supply(str(key))}"
        ) from exc
    except (IndexError, KeyError, RuntimeError) as exc:
        if mode == "offline":
            raise SpaceUnavailableError(
                f"space {space!r} is not available offline (only {list(EMBEDDED_SPACES)} is embedded); "
                f"connect to the network or {_how_to_supply(str(key or space))}"
            ) from exc
        raise UnknownSpaceError(f"siibra knows no space {space!r}: {str(exc).splitlines()[0]}") from exc


#: spaces whose siibra template is a whole-head T1 (skull-stripped with :func:`siibra_anchor.brain_mask.skull_strip`
#: before use: siibra 1.0.1a25's configuration declares no brain mask for them)
WHOLE_HEAD_SPACES = ("colin27",)
#: template formats in the order they are fetched: single NIfTI files first, image pyramids last
TEMPLATE_FORMATS = ("nii", "zip/nii", "neuroglancer/precomputed")
#: version of the template-preparation step, part of the cache key
TEMPLATE_PREP = "skullstrip-v1"


def feasible_resolution(volume: Any, wanted_mm: float) -> float:
    """Resolution (mm) to ask a siibra neuroglancer/precomputed volume for: ``wanted_mm`` when one of its
    scales resolves it (a scale at least that fine exists), else its finest scale (never an infeasible one).

    ``volume`` is a siibra ``Volume`` (or a feature with ``_providers``); reads the pyramid's ``info``.
    """
    prov = getattr(volume, "_providers", {}).get("neuroglancer/precomputed")
    if prov is None:
        return float(wanted_mm)
    res: list[float] = []
    for frag in getattr(prov, "_fragments", {}).values():
        thin = frag.determine_section() if len(frag.scales) > 1 else None  # a section's axis: siibra ignores it
        for sc in frag.scales:
            r = np.asarray(sc.res_mm, float).ravel()
            res.append(float(np.max(np.delete(r, thin) if thin is not None else r)))
    if not res or min(res) <= wanted_mm:
        return float(wanted_mm)
    log.info("no scale of %s resolves %.3g mm; using its finest, %.3g mm", volume, wanted_mm, min(res))
    return min(res)


def fetch_volume(volume: Any, what: str, resolution_mm: float = PYRAMID_RESOLUTION_MM) -> Any:
    """``volume.fetch(...)`` in the first of :data:`TEMPLATE_FORMATS` it offers; raises
    :class:`SpaceUnavailableError` when siibra returns nothing (siibra logs and swallows many failures)."""
    formats = set(getattr(volume, "formats", ()) or ())
    fmt = next((f for f in TEMPLATE_FORMATS if f in formats), None)
    if fmt is None:
        raise SpaceUnavailableError(
            f"siibra offers {what} only as {sorted(formats)}; no volume format siibra-anchor reads"
        )
    if fmt == "neuroglancer/precomputed":
        img = volume.fetch(format=fmt, resolution_mm=feasible_resolution(volume, resolution_mm))
    else:
        img = volume.fetch(format=fmt)
    if img is None or not hasattr(img, "dataobj"):
        raise SpaceUnavailableError(f"siibra returned no image for {what} (format {fmt!r}, got {type(img).__name__})")
    return img


def template_cache_path(key: str) -> Path:
    """Where :func:`fetch_template` keeps the template of canonical space ``key`` (``<cache>/templates/``)."""
    ident = {"space": SPACE_IDS.get(key, key), "res": PYRAMID_RESOLUTION_MM, "prep": TEMPLATE_PREP}
    return cache_dir("templates") / f"{key}-{cache_key(ident)}.nii.gz"


def fetch_template(space: Any, online: bool | None = None, timeout_s: float = 300.0) -> Path:
    """Path of the space's template as a NIfTI file (world mm of the space), fetched through siibra once.

    "mni152" returns the embedded file. Other spaces are fetched through siibra within ``timeout_s``
    (retried twice with backoff) in the first format of :data:`TEMPLATE_FORMATS` the space declares
    (Colin27: the ``zip/nii`` archive; BigBrain: its image pyramid at a feasible resolution). Whole-head
    templates (:data:`WHOLE_HEAD_SPACES`) are brain-masked with :func:`siibra_anchor.brain_mask.skull_strip`.
    The result is written atomically to ``<cache>/templates/<key>-<hash>.nii.gz`` (its brain mask beside it,
    ``...-mask.nii.gz``); later calls reuse it without any network access. Offline, an HTTP error, a stall
    or an empty answer from siibra raise :class:`SpaceUnavailableError` saying how to supply a template.
    """
    from siibra_anchor.net import call_with_timeout, retry

    key = resolve_space(space, online=online)
    if key in EMBEDDED_SPACES:
        from siibra_anchor.templates import volume_path

        return volume_path(key)
    target = template_cache_path(key)
    if target.is_file():
        return target
    sp = siibra_space(key, online=online, timeout_s=min(timeout_s, 60.0))

    def fetch() -> Any:
        try:
            return fetch_volume(sp.get_template(), f"the template of {key!r}")
        except (SpaceUnavailableError, NetworkError):
            raise
        except Exception as exc:  # siibra's HTTP errors (404, 5xx), broken archives, ...
            raise SpaceUnavailableError(f"siibra failed to fetch the template of {key!r}: {exc}") from exc

    try:
        img = retry(
            call_with_timeout,
            fetch,
            timeout_s=timeout_s,
            what=f"fetching the {key} template",
            attempts=3,
            backoff_s=1.0,
            retry_on=(NetworkError,),
        )
    except (NetworkError, SpaceUnavailableError) as exc:
        raise SpaceUnavailableError(
            f"could not fetch the template of {key!r} through siibra ({exc}); {_how_to_supply(key)}"
        ) from exc
    import nibabel as nib

    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SpaceUnavailableError(f"siibra's template of {key!r} has shape {data.shape}; {_how_to_supply(key)}")
    affine = np.asarray(img.affine, float)
    if key in WHOLE_HEAD_SPACES:
        from siibra_anchor.brain_mask import skull_strip

        mask = skull_strip(data, affine)
        data = np.where(mask, data, 0).astype(data.dtype)
        mask_path = target.with_name(target.name.replace(".nii.gz", "-mask.nii.gz"))
        with atomic_file(mask_path, suffix=".nii.gz") as tmp:
            nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(str(tmp))
    with atomic_file(target, suffix=".nii.gz") as tmp:
        nib.Nifti1Image(data, affine).to_filename(str(tmp))
    log.info("stored the %s template (%s) in %s", key, SPACE_NAMES.get(key, key), target)
    return target


def reference_for_space(space: Any, online: bool | None = None, timeout_s: float = 300.0, **kwargs: Any) -> Any:
    """:class:`~siibra_anchor.reference.Reference` of a space built from its template (see :func:`fetch_template`).

    ``kwargs`` go to ``Reference.from_volume`` (n_sections, axis, encoder, spec, stride_px, cache, progress).
    """
    from siibra_anchor.reference import Reference

    key = resolve_space(space, online=online)
    path = fetch_template(key, online=online, timeout_s=timeout_s)
    return Reference.from_volume(path, space=key, **kwargs)
