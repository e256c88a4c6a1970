"""Tests of siibra_anchor.training: losses vs plain loops, augmentation contracts, datasets, trainer."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from siibra_anchor.training import augment as A
from siibra_anchor.training.config import TrainConfig, load_config
from siibra_anchor.training.datasets import (
    PlanePatchSampler,
    RegisteredSectionDataset,
    ZarrPatchDataset,
    cut_planes,
    normalize_planes,
    write_patch_store,
)
from siibra_anchor.training.errors import TrainConfigError
from siibra_anchor.training.losses import info_nce_loss, spatial_contrastive_loss
from siibra_anchor.training.volumes import load_training_volumes

from siibra_anchor.encoders import build_encoder, encoder_hash, load_encoder, shipped_encoders
from siibra_anchor.patches import PatchSpec
from siibra_anchor.planes import CANONICAL_PLANES, cut_plane, plane_affine

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


# -- losses ------------------------------------------------------------------------------------------------


def _ref_spatial(z, c, sigma, tau, max_sig):
    n = len(z)
    zn = [np.asarray(v, float) / math.sqrt(sum(x * x for x in v)) for v in z]
    total, rows = 0.0, 0
    for i in range(n):
        dists = [math.dist(c[i], c[j]) for j in range(n)]
        if max_sig is not None and min(dists[j] for j in range(n) if j != i) > max_sig * sigma:
            continue
        s = [float(zn[i] @ zn[j]) / tau for j in range(n)]
        den_p = sum(math.exp(s[k]) for k in range(n) if k != i)
        den_t = sum(math.exp(-(dists[k] ** 2) / (2 * sigma**2)) for k in range(n) if k != i)
        li = 0.0
        for j in range(n):
            if j == i:
                continue
            t = math.exp(-(dists[j] ** 2) / (2 * sigma**2)) / den_t
            li -= t * math.log(math.exp(s[j]) / den_p)
        total += li
        rows += 1
    return total / rows if rows else 0.0


def _ref_infonce(z1, z2, tau, symmetric):
    def norm(v):
        return np.asarray(v, float) / math.sqrt(sum(x * x for x in v))

    a, b = [norm(v) for v in z1], [norm(v) for v in z2]
    n = len(a)

    def one(p, q):
        tot = 0.0
        for i in range(n):
            s = [float(p[i] @ q[j]) / tau for j in range(n)]
            tot -= math.log(math.exp(s[i]) / sum(math.exp(x) for x in s))
        return tot / n

    return 0.5 * (one(a, b) + one(b, a)) if symmetric else one(a, b)


@pytest.mark.parametrize("max_sig", [None, 1.0, 3.0])
def test_spatial_loss_matches_loop_reference(max_sig):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((9, 5))
    c = rng.uniform(0, 40, (9, 3))
    c[1] = c[0]  # two views of one patch
    got = spatial_contrastive_loss(torch.from_numpy(z), torch.from_numpy(c), 8.0, 0.2, max_sig)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_ref_spatial(z, c, 8.0, 0.2, max_sig), rel=1e-10, abs=1e-12)


def test_spatial_loss_far_rows_and_gradients():
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    far = torch.tensor([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], dtype=torch.float64)
    loss = spatial_contrastive_loss(z, far, 5.0, 0.1, max_distance_sigmas=3.0)
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    near = far / 50
    loss = spatial_contrastive_loss(z, near, 5.0, 0.1)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # targets reward similarity of near patches: aligning them lowers the loss
    aligned = torch.tensor([[1.0, 0, 0], [1.0, 0.01, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    close = torch.tensor([[0, 0, 0], [1, 0, 0], [60, 0, 0], [0, 60, 0]], dtype=torch.float64)
    shuffled = aligned[[2, 3, 0, 1]]
    assert spatial_contrastive_loss(aligned, close, 5.0, 0.1) < spatial_contrastive_loss(shuffled, close, 5.0, 0.1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_matches_loop_reference(symmetric):
    rng = np.random.default_rng(2)
    z1, z2 = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    got = info_nce_loss(torch.from_numpy(z1), torch.from_numpy(z2), 0.3, symmetric=symmetric)
    assert got.item() == pytest.approx(_ref_infonce(z1, z2, 0.3, symmetric), rel=1e-10)


def test_losses_reject_bad_shapes():
    from siibra_anchor.training.errors import PatchShapeError

    with pytest.raises(PatchShapeError):
        spatial_contrastive_loss(torch.randn(4, 3), torch.randn(5, 3), 5.0)
    with pytest.raises(PatchShapeError):
        info_nce_loss(torch.randn(4, 3), torch.randn(4, 2))


# -- augmentations -----------------------------------------------------------------------------------------


def _patches(n=12, size=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 1.0, (n, size, size)).astype(np.float32)
    x[:, :, : size // 3] = 0.0  # background strip
    return x


INTENSITY = [A.ContrastInversion, A.IntensityRemap, A.RandomGamma, A.RandomBlur, A.ResolutionChange, A.GaussianNoise]
GEOMETRIC = [A.ElasticWarp, A.Tears, A.RandomRotation, A.TissueCrop]


@pytest.mark.parametrize("block", INTENSITY + GEOMETRIC, ids=lambda b: b.__name__)
def test_block_contract(block):
    x = _patches()
    y = block(p=1.0)(x, seed=3)
    assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert np.abs(y - x).max() > 1e-3  # p=1 changes every sample ...
    assert np.array_equal(block(p=1.0)(x, seed=3), y)  # ... reproducibly
    assert np.array_equal(block(p=0.0)(x, seed=3), x)  # p=0 is the identity
    if block in INTENSITY:
        assert np.all(y[x == 0] == 0)  # background stays background
        assert np.count_nonzero(y[x > 0] != x[x > 0]) > 0
    else:
        assert np.all(y[:, :, :2] == 0) or block is A.RandomRotation  # no tissue appears from nothing
    # torch input (N, 1, P, P) gives a tensor of the same shape
    t = block(p=1.0)(torch.from_numpy(x)[:, None], seed=3)
    assert isinstance(t, torch.Tensor) and t.shape == (12, 1, 40, 40)
    np.testing.assert_allclose(t[:, 0].numpy(), y, atol=1e-6)


def test_contrast_inversion_exact_and_rotation_by_180():
    x = _patches(4, 33)
    y = A.ContrastInversion(p=1.0)(x)
    np.testing.assert_allclose(y[x > 0], 1.0 - x[x > 0], atol=1e-7)
    r = A.RandomRotation(p=1.0, max_deg=180.0)
    # a 180-degree turn of an odd patch is a flip of both axes: compare with the angle this seed drew
    g = torch.Generator().manual_seed(0)
    angle = float(-180.0 + 360.0 * torch.rand(1, generator=g))
    out = r(x[:1], seed=0)[0]
    ref = A.RandomRotation(p=1.0, max_deg=0.0)(x[:1], seed=0)[0]
    np.testing.assert_allclose(ref, x[0], atol=1e-5)  # zero angle is the identity
    assert out.shape == (33, 33) and not np.allclose(out, x[0]) and abs(angle) <= 180


def test_default_pipeline_crops_and_keeps_contract():
    x = _patches(16, 48)
    aug = A.default_pipeline(crop_to=32)
    y = aug(x, seed=5)
    assert y.shape == (16, 32, 32) and y.min() >= 0 and y.max() <= 1
    assert np.array_equal(aug(x, seed=5), y) and not np.array_equal(aug(x, seed=6), y)
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.default_pipeline({"nope": 1.0})


# -- datasets ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mni():
    return load_training_volumes(["mni152"])[0]


def test_cut_planes_and_normalisation_match_numpy_path(mni):
    from siibra_anchor.patches import normalize_intensity

    rows = np.array([CANONICAL_PLANES["coronal"][0], CANONICAL_PLANES["axial"][0]])
    cols = np.array([CANONICAL_PLANES["coronal"][1], CANONICAL_PLANES["axial"][1]])
    centres = np.array([[0.0, -10.0, 5.0], [12.0, 3.0, 20.0]])
    vol = torch.from_numpy(np.stack([mni.data, mni.mask.astype(np.float32)]))[None]
    img, msk = cut_planes(vol, mni.affine, centres, rows, cols, 1.5, 61)
    norm = normalize_planes(img, msk)
    for q in range(2):
        aff = plane_affine(centres[q], rows[q], cols[q], 1.5, (61, 61))
        ref = cut_plane(mni.data, mni.affine, aff, (61, 61))
        ref_m = cut_plane(mni.mask.astype(np.float32), mni.affine, aff, (61, 61)) > 0.5
        np.testing.assert_allclose(img[q].numpy(), ref, atol=2e-3)
        assert np.mean(msk[q].numpy() != ref_m) < 0.005  # only ties at the 0.5 threshold may differ
        np.testing.assert_allclose(norm[q].numpy(), normalize_intensity(ref, msk[q].numpy()), atol=1e-4)


def _in_mask(vol, pts):
    inv = np.linalg.inv(vol.affine)
    ijk = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < vol.mask.shape), axis=1)
    return ok & vol.mask[tuple(np.clip(ijk, 0, np.array(vol.mask.shape) - 1).T)]


def test_plane_sampler_batches(mni):
    s = PlanePatchSampler([mni], PatchSpec(), context_px=40, groups=4, planes_per_group=2, far_per_plane=4)
    b = s.sample(64, seed=[0, 0, 1])
    assert b.patches.shape == (64, 40, 40) and b.centres.shape == (64, 3)
    assert b.patches.min() >= 0 and b.patches.max() <= 1
    assert _in_mask(mni, b.centres.numpy()).mean() > 0.97  # centres are brain points (coordinates right)
    again = s.sample(64, seed=[0, 0, 1])
    assert torch.equal(again.patches, b.patches) and torch.equal(again.centres, b.centres)
    # grouped batches have near neighbours; a batch of far patches has not
    far = PlanePatchSampler([mni], PatchSpec(), far_fraction=1.0, far_per_plane=4).sample(64, seed=2)

    def nn(c):
        d = torch.cdist(c, c)
        return float(d.fill_diagonal_(1e9).min(1).values.median())

    assert nn(b.centres) < 8.0 < nn(far.centres)


@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_plane_sampler_scale_jitter_keeps_world_centres_right(mni, jitter):
    """Planes cut with pixels 0.7-1.3 times the working spacing: each patch's centre pixel still shows
    the volume at the world centre the sampler reports (the contrastive targets stay right)."""
    from scipy import ndimage

    s = PlanePatchSampler([mni], PatchSpec(), context_px=40, groups=4, planes_per_group=2, scale_jitter=jitter)
    b = s.sample(128, seed=[3, 0, 1])
    c = b.centres.numpy().astype(float)
    inv = np.linalg.inv(mni.affine)
    ijk = c @ inv[:3, :3].T + inv[:3, 3]
    vol_at = ndimage.map_coordinates(np.asarray(mni.data, float), ijk.T, order=1)
    centre = b.patches[:, 19:21, 19:21].mean(dim=(1, 2)).numpy()
    ok = _in_mask(mni, c)
    assert ok.mean() > 0.95
    assert np.corrcoef(centre[ok], vol_at[ok])[0, 1] > 0.9
    with pytest.raises(TrainConfigError, match="scale_jitter"):
        PlanePatchSampler([mni], PatchSpec(), scale_jitter=0.6)


def test_registered_section_dataset_coordinates(mni):
    from siibra_anchor.section import Section

    row, col = CANONICAL_PLANES["sagittal"]
    pairs = []
    for x in (-30.0, -20.0):
        aff = plane_affine([x, -20.0, 10.0], row, col, 1.0, (170, 210))
        img = cut_plane(mni.data, mni.affine, aff, (170, 210))
        mask = cut_plane(mni.mask.astype(np.float32), mni.affine, aff, (170, 210)) > 0.5
        pairs.append((Section(img, spacing_mm=1.0, mask=mask), aff))
    ds = RegisteredSectionDataset(pairs, PatchSpec(), groups=2, group_radius_mm=12.0)
    b = ds.sample(24, seed=0)
    assert b.patches.shape == (24, 32, 32) and len(ds) > 100
    c = b.centres.numpy().astype(float)
    assert _in_mask(mni, c).all() and np.allclose(np.sort(np.unique(np.round(c[:, 0]))), [-30, -20], atol=0.6)
    # each patch is the volume around its centre (same plane orientation, working spacing)
    for k in range(0, 24, 6):
        aff = plane_affine(c[k], row, col, 1.5, (32, 32))
        direct = cut_plane(mni.data, mni.affine, aff, (32, 32))
        m = b.patches[k].numpy() > 0
        assert np.corrcoef(direct[m], b.patches[k].numpy()[m])[0, 1] > 0.9


def test_zarr_store_roundtrip_and_streaming(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    patches = rng.random((n, 16, 16)).astype(np.float32)
    centres = rng.uniform(-60, 60, (n, 3))
    path = write_patch_store(tmp_path / "p.zarr", patches, centres, chunk_size=32, spacing_mm=1.5)
    ds = ZarrPatchDataset(path, groups=3)
    assert len(ds) == n and ds.n_chunks == 10 and ds.spacing_mm == 1.5
    lookup = {tuple(np.round(c, 6)): i for i, c in enumerate(centres)}
    for i in (0, 77, n - 1):
        p, c = ds[i]
        j = lookup[tuple(np.round(c, 6))]  # the store is reordered, pairs stay together
        np.testing.assert_allclose(p, patches[j], atol=0.5 / 255 + 1e-6)
    b = ds.sample(40, seed=1)
    assert b.patches.shape == (40, 16, 16) and b.centres.shape == (40, 3)
    seen = np.concatenate([bb.centres.numpy() for bb in ds.iter_batches(64, seed=2)])
    assert len(seen) == n and len({tuple(np.round(c, 3)) for c in seen}) == n
    # chunks are spatially compact: a chunk's spread is below the whole set's
    _, c0 = ds.read_chunk(0)
    assert np.ptp(c0, axis=0).mean() < np.ptp(centres, axis=0).mean()
    with pytest.raises(FileNotFoundError):
        ZarrPatchDataset(tmp_path / "missing.zarr")


# -- config ------------------------------------------------------------------------------------------------


def test_config_validation_and_files(tmp_path):
    with pytest.raises(TrainConfigError, match="batchsize"):
        load_config({"batchsize": 3})
    with pytest.raises(TrainConfigError, match="sigma_mm"):
        load_config({"sigma_mm": -1})
    with pytest.raises(TrainConfigError, match="views"):
        load_config({"loss": "infonce", "views": 1})
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"steps": 7, "val": {"every": 2}}))
    cfg = load_config(p, ["encoder.width=8", "val.queries=[mni152-2009a-gm]"])
    assert (cfg.steps, cfg.val.every, cfg.encoder.width, cfg.val.queries) == (7, 2, 8, ["mni152-2009a-gm"])
    from siibra_anchor.templates import VOLUMES

    shipped = sorted(CONFIGS.glob("*.yaml"))
    assert {"cpu_quick.yaml", "gpu.yaml"} <= {p.name for p in shipped}
    for path in shipped:
        c = load_config(path)
        assert set(c.volumes) <= set(VOLUMES) and set(c.val.queries).isdisjoint(c.volumes)


def test_every_recorded_encoder_names_a_config_that_builds_it():
    """Each recorded encoder trained by a config names that config, and the config builds that encoder."""
    from siibra_anchor.encoders import default_manifest

    trained = {k: e for k, e in default_manifest()["encoders"].items() if e.get("steps")}
    assert "patch-cnn-w24-d128-pool2-cpu1h" in trained
    for name, entry in trained.items():
        cfg = load_config(CONFIGS.parent.parent / entry["config_file"])
        assert cfg.encoder_config() == entry["config"], name


# -- trainer -----------------------------------------------------------------------------------------------

TINY = {
    "volumes": ["mni152"],
    "patch": {"spacing_mm": 3.0, "size_px": 16},  # small planes and patches keep the runs fast
    "batch_size": 40,
    "groups": 4,
    "planes_per_group": 2,
    "far_per_plane": 5,
    "encoder": {"width": 4, "dim": 16},
    "steps": 30,
    "warmup_steps": 3,
    "lr": 0.01,
    "log_every": 1,
    "checkpoint_every": 15,
    "keep_checkpoints": 5,
    "threads": 1,
    "progress": False,
    "val": {"enabled": False},
    "augment": {"rotate": 0.0, "elastic": 0.0},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from siibra_anchor.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    return train({**TINY, "out_dir": str(out)}, command="pytest tiny"), out


def test_training_reduces_loss_and_is_reproducible(tiny_run, tmp_path):
    from siibra_anchor.training.trainer import train

    res, out = tiny_run
    losses = [r["loss"] for r in res["curves"]["train"]]
    assert len(losses) == 30
    assert np.mean(losses[-8:]) < np.mean(losses[:5]) - 0.02
    same = train({**TINY, "out_dir": str(tmp_path)}, command="pytest tiny")
    assert [r["loss"] for r in same["curves"]["train"]] == losses  # the same config repeats exactly
    assert same["encoder_hash"] == res["encoder_hash"]
    assert same["sha256"] == res["sha256"]  # the same file bytes, so a retrained encoder matches its sha256
    other = train({**TINY, "out_dir": str(tmp_path / "b"), "steps": 3, "seed": 1}, command="x")
    assert [r["loss"] for r in other["curves"]["train"]] != losses[:3]  # the seed matters


def test_loader_workers_do_not_change_the_run(tmp_path):
    from siibra_anchor.training.trainer import train

    base = {**TINY, "steps": 4, "checkpoint_every": 0}
    a = train({**base, "out_dir": str(tmp_path / "a")}, command="x")
    b = train({**base, "out_dir": str(tmp_path / "b"), "num_workers": 2}, command="x")
    assert [r["loss"] for r in a["curves"]["train"]] == [r["loss"] for r in b["curves"]["train"]]
    assert a["encoder_hash"] == b["encoder_hash"]


def test_encoder_files_reload_identically(tiny_run):
    res, out = tiny_run
    man = json.loads((out / "encoder.json").read_text())
    assert man["sha256"] == res["sha256"] and man["command"] == "pytest tiny" and man["steps"] == 30
    assert man["config"] == {"arch": "patch-cnn", "in_channels": 1, "width": 4, "dim": 16, "patch_size": 16}
    model = load_encoder(out / man["file"], man["config"], sha256=man["sha256"])  # weights_only inside
    state = torch.load(out / "encoder.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    ck = torch.load(out / "checkpoints" / "step-00000030.pt", map_location="cpu", weights_only=True)
    ref = build_encoder(man["config"])
    ref.load_state_dict(ck["model"])
    ref.eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert encoder_hash(model) == res["encoder_hash"]
    assert (out / "curves.json").is_file() and (out / "curves.png").stat().st_size > 1000


def test_init_weights_fine_tunes_from_a_trained_encoder(tiny_run, tmp_path):
    from siibra_anchor.training.trainer import train

    res, out = tiny_run
    first = res["curves"]["train"][0]["loss"]  # a random init on the seed's first batch
    ft = train(
        {**TINY, "out_dir": str(tmp_path / "ft"), "steps": 2, "init_weights": str(out / "encoder.pt")}, command="x"
    )
    # the same first batch, scored by the trained weights: the loss starts where the tiny run ended
    assert ft["curves"]["train"][0]["loss"] < first - 0.02
    with pytest.raises(TrainConfigError, match="neither a shipped encoder nor a file"):
        train({**TINY, "out_dir": str(tmp_path / "x"), "init_weights": "no-such-encoder"}, command="x")
    with pytest.raises(TrainConfigError, match="do not fit"):  # the shipped default is a width-24 encoder
        train({**TINY, "out_dir": str(tmp_path / "y"), "init_weights": shipped_encoders()[0]}, command="x")
    # a lineage encoder (training/lineage/ of a clone) where no clone is: the typed error says where it is
    import siibra_anchor.encoders as enc

    lineage = enc.lineage_encoders()[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "REPO_ROOT", tmp_path)
        with pytest.raises(TrainConfigError, match="could not be loaded.*git repository"):
            train({**TINY, "out_dir": str(tmp_path / "z"), "init_weights": lineage}, command="x")
    assert not (tmp_path / "z" / "encoder.pt").exists()


def test_resume_continues_from_checkpoint(tiny_run, tmp_path):
    from siibra_anchor.training.trainer import train

    res, out = tiny_run
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(out / "checkpoints" / "step-00000015.pt", tmp_path / "checkpoints")
    resumed = train({**TINY, "out_dir": str(tmp_path)}, resume=True, command="pytest tiny")
    steps = [r["step"] for r in resumed["curves"]["train"]]
    assert steps == list(range(1, 31))  # curves of steps 1-15 came from the checkpoint
    assert [r["loss"] for r in resumed["curves"]["train"]] == [r["loss"] for r in res["curves"]["train"]]
    assert resumed["encoder_hash"] == res["encoder_hash"]


def test_validation_and_baseline_recorded(tmp_path):
    from siibra_anchor.training.trainer import train

    cfg = {
        **TINY,
        "steps": 4,
        "checkpoint_every": 0,
        "out_dir": str(tmp_path),
        "val": {"every": 2, "queries": ["mni152-2009a-gm"], "ref_step_mm": 25, "ref_stride_px": 8, "n_queries": 20},
    }
    res = train(cfg, command="x")
    assert [v["step"] for v in res["curves"]["val"]] == [2, 4]
    for m in (res["val"], res["baseline_raw_pixel"]):
        assert 0 <= m["median_mm"] < 250 and set(m["per_volume"]) == {"mni152-2009a-gm"}
    man = json.loads((tmp_path / "encoder.json").read_text())
    assert man["val"]["median_mm"] == res["val"]["median_mm"] and man["baseline_raw_pixel"] is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback, whatever the hostname resolves to
    from siibra_anchor.training.trainer import train

    res = train({**TINY, "steps": 3, "checkpoint_every": 0, "out_dir": out, "device": "cpu"}, command="ddp")
    Path(out, f"rank{rank}.json").write_text(json.dumps({k: res[k] for k in ("world_size", "encoder_hash", "encoder")}))


@pytest.mark.slow  # two spawned processes import torch and load a volume: ~10-25 s on 2 cores
def test_ddp_gloo_two_processes(tmp_path):
    import torch.multiprocessing as mp

    try:
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    except mp.ProcessExitedException as e:
        # Once in CI (stop 28) a rank died by SIGABRT inside gloo's C++ threads ("terminate called without
        # an active exception"), not reproduced in 24 runs here, loaded or not. One more try on a fresh port
        # for a death by signal only; a Python error in a rank, or a second crash, still fails the test.
        if e.signal_name is None:
            raise
        for f in tmp_path.iterdir():
            f.unlink() if f.is_file() else shutil.rmtree(f)
        mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["encoder_hash"] == r1["encoder_hash"]  # gradients were averaged: replicas agree
    assert r0["encoder"] and r1["encoder"] is None  # only rank 0 writes
    assert (tmp_path / "encoder.pt").is_file()


def test_cli_export_volumes_and_train(tmp_path, capsys):
    from siibra_anchor.training import main

    npz = tmp_path / "v.npz"
    assert main(["export-volumes", str(npz), "--keys", "mni152"]) == 0
    # a synthetic brain rendered from the exported volume is the one rendered from the NIfTI file (same
    # grid, so the same random fields and contrast), up to the float16 rounding of the source
    from siibra_anchor.training.synth import load_volumes

    a, b = load_volumes(["synth:900002"])[0], load_volumes(["synth:900002"], npz=str(npz))[0]
    assert a.name == b.name and a.data.shape == b.data.shape and np.allclose(a.affine, b.affine)
    assert np.mean(np.abs(a.data - b.data)) < 1e-3 * float(np.abs(a.data).max())
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "steps": 2, "checkpoint_every": 0}))
    code = main([str(cfg), "--out", str(tmp_path / "o"), "--volumes-npz", str(npz), "--quiet"])
    assert code == 0
    man = json.loads((tmp_path / "o" / "encoder.json").read_text())
    assert man["command"].startswith("python -m siibra_anchor.training ") and "--volumes-npz" in man["command"]
    assert man["train_config"]["volumes_npz"] == str(npz)
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert main([str(cfg), "--set", "steps=-1"]) == 2
    assert "steps" in capsys.readouterr().err


def test_training_config_defaults_are_consistent():
    cfg = TrainConfig()
    assert cfg.context_px > cfg.patch.size_px  # rotation/warp on a larger context, then cropped
    assert cfg.encoder_config()["arch"] == "patch-cnn"


def test_training_from_registered_sections_through_a_patch_store(mni, tmp_path):
    from siibra_anchor.training.trainer import train

    from siibra_anchor.section import Section

    row, col = CANONICAL_PLANES["coronal"]
    pairs = []
    for y in (-20.0, -10.0, 0.0):
        aff = plane_affine([0.0, y, 10.0], row, col, 1.0, (170, 150))
        img = cut_plane(mni.data, mni.affine, aff, (170, 150))
        mask = cut_plane(mni.mask.astype(np.float32), mni.affine, aff, (170, 150)) > 0.5
        pairs.append((Section(img, spacing_mm=1.0, mask=mask), aff))
    spec = PatchSpec(spacing_mm=3.0, size_px=16)
    ds = RegisteredSectionDataset(pairs, spec, context_px=24, groups=4)
    b = ds.sample(256, seed=0)
    store = write_patch_store(tmp_path / "h.zarr", b.patches.numpy(), b.centres.numpy(), chunk_size=32, spacing_mm=3.0)
    base = {**TINY, "steps": 3, "checkpoint_every": 0}
    only = train({**base, "volumes": [], "patch_stores": [str(store)], "out_dir": str(tmp_path / "a")}, command="x")
    mixed = train({**base, "patch_stores": [str(store)], "out_dir": str(tmp_path / "b")}, command="x")
    for r in (only, mixed):
        assert r["steps"] == 3 and np.isfinite(r["final_loss"])
    with pytest.raises(TrainConfigError, match="mm/px"):
        train({**base, "patch": {"spacing_mm": 1.5, "size_px": 16}, "patch_stores": [str(store)]})


def test_compare_encoders_on_benchmark_sections(tmp_path, capsys):
    """The comparison tool: a shipped name and a trained encoder.pt (with its encoder.json) measured on the
    same benchmark sections; a tampered file is refused by its sha256."""
    import shutil
    from importlib import resources

    from siibra_anchor.training.compare import load_any_encoder, main

    from siibra_anchor.encoders import default_manifest
    from siibra_anchor.errors import RealDataMissingError, WeightsChecksumError

    name = "patch-cnn-w24-d128-pool2-cpu1h"
    entry = default_manifest()["encoders"][name]
    pt = tmp_path / "encoder.pt"
    shutil.copyfile(str(resources.files("siibra_anchor") / "weights" / entry["file"]), pt)
    (tmp_path / "encoder.json").write_text(json.dumps({"config": entry["config"], "sha256": entry["sha256"]}))
    out = tmp_path / "cmp.json"
    assert main(["patch-cnn-w24-d128-pool2-v2", str(pt), "--cases", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    a, b = res["patch-cnn-w24-d128-pool2-v2"], res[str(pt)]
    assert a["n_patches"] == b["n_patches"] > 20  # the same sections
    assert 0 < a["patch_median_mm"] < 200 and 0 < b["patch_median_mm"] < 200
    assert "patch top-1 median" in capsys.readouterr().out
    assert main([str(pt), "--cases", "2", "--seed", "2027", "--json", str(out)]) == 0  # fresh sections
    assert json.loads(out.read_text())[str(pt)]["n_patches"] != b["n_patches"]
    # the calibration set: its own template-family draw, and the real calibration split needs all its volumes
    assert main([str(pt), "--cases", "2", "--calibration", "--json", str(out)]) == 0
    calib = json.loads(out.read_text())[str(pt)]
    assert calib["n_patches"] not in (b["n_patches"], 0)
    for seed in ("2027", "2026"):  # any seed, the test sets' own included
        with pytest.raises(SystemExit):
            main([str(pt), "--cases", "1", "--calibration", "--seed", seed])
    with pytest.raises(RealDataMissingError, match="reg-"):
        main([str(pt), "--cases", "1", "--calibration", "--real-data", str(tmp_path / "none"), "--real-n", "1"])
    # a sparser reference (its own density, its own patches) and an AnchorParams field for --sections
    sparse = ["--n-sections", "8", "--stride-px", "6", "--sections", "--param", "k=4", "--json", str(out)]
    assert main([str(pt), "--cases", "1", *sparse]) == 0
    c = json.loads(out.read_text())[str(pt)]
    assert 0 < c["reference_patches"] < b["reference_patches"] and c["section_median_mm"] >= 0
    assert "median time" in capsys.readouterr().out
    for bad in (["--param", "k"], ["--param", "nope=1"], ["--param", "k=x"], ["--param", "scale_range=1"]):
        with pytest.raises(SystemExit):
            main([str(pt), "--cases", "1", *bad])
    pt.write_bytes(pt.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(WeightsChecksumError):
        load_any_encoder(str(pt))


def test_weight_average_is_the_elementwise_mean_reloads_and_validates(tiny_run, tmp_path, capsys):
    """``python -m siibra_anchor.training.average``: two encoders of one lineage (a tiny run and a fine-tune
    of it) average to their element-wise mean, which reloads through the sha256 in its encoder.json and
    scores on a config's validation set beside the raw-pixel baseline; one encoder, encoders of another
    config and a file without its encoder.json are refused with a typed error."""
    from siibra_anchor.training.average import average_encoders, average_state_dicts, main
    from siibra_anchor.training.compare import load_any_encoder
    from siibra_anchor.training.trainer import train

    _, out = tiny_run
    a = out / "encoder.pt"
    ft = train({**TINY, "out_dir": str(tmp_path / "ft"), "steps": 3, "init_weights": str(a)}, command="x")
    b = Path(ft["out_dir"]) / "encoder.pt"
    cfg = tmp_path / "val.json"
    val = {"queries": ["mni152-2009a-gm"], "ref_step_mm": 25, "ref_stride_px": 8, "n_queries": 20}
    cfg.write_text(json.dumps({**TINY, "val": val}))
    assert main([str(a), str(b), "--out", str(tmp_path / "avg"), "--validate", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "mean of 2 encoders" in printed and "raw pixels" in printed
    man = json.loads((tmp_path / "avg" / "encoder.json").read_text())
    got = load_any_encoder(str(tmp_path / "avg" / "encoder.pt")).state_dict()  # checked against man["sha256"]
    sa, sb = (load_any_encoder(str(p)).state_dict() for p in (a, b))
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # the fine-tune moved the weights
    for k in sa:
        torch.testing.assert_close(got[k], (sa[k].double() + sb[k].double()).div(2).to(sa[k].dtype))
    assert [s["path"] for s in man["averaged_from"]] == [str(a), str(b)]
    assert average_encoders([str(a), str(b)], tmp_path / "again")["sha256"] == man["sha256"]  # the same bytes
    assert man["config"] == json.loads(a.with_suffix(".json").read_text())["config"]
    v, base = man["val"], man["baseline_raw_pixel"]
    assert v["per_volume"].keys() == base["per_volume"].keys() == {"mni152-2009a-gm"}
    assert 0 < v["median_mm"] < 300 and 0 < base["median_mm"] < 300
    # typed refusals
    with pytest.raises(TrainConfigError, match="at least two"):
        average_encoders([str(a)], tmp_path / "one")
    with pytest.raises(TrainConfigError, match="different configs"):
        average_encoders([str(a), "patch-cnn-w24-d128-pool2-v2"], tmp_path / "other")
    with pytest.raises(TrainConfigError, match="neither"):
        average_encoders([str(a), "raw-pixel"], tmp_path / "raw")
    lone = tmp_path / "lone" / "encoder.pt"
    lone.parent.mkdir()
    shutil.copyfile(a, lone)
    with pytest.raises(TrainConfigError, match="encoder.json"):
        average_encoders([str(a), str(lone)], tmp_path / "lone_out")
    with pytest.raises(TrainConfigError, match="shape"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(TrainConfigError):  # a config for another encoder: refused before anything is written
        average_encoders(
            [str(a), str(b)],
            tmp_path / "badval",
            validate=Path(__file__).parents[1] / "training/configs/cpu_finetune5.yaml",
        )
    assert not (tmp_path / "badval").exists()
    assert main([str(a), "--out", str(tmp_path / "cli1")]) == 2
    assert "at least two" in capsys.readouterr().err
