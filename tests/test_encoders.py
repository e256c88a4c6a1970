"""Shipped encoders: checksums, loading with weights_only, the (N, C, P, P) -> (N, D) contract."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

from siibra_anchor.encoders import (
    REPO_ROOT,
    PatchEncoder,
    RawPixelEncoder,
    check_encoder,
    default_manifest,
    embed_patches,
    encoder_hash,
    lineage_encoders,
    load_default_encoder,
    load_encoder,
    shipped_encoders,
)
from siibra_anchor.errors import EncoderError, WeightsChecksumError


@pytest.mark.parametrize("name", shipped_encoders() + lineage_encoders())
def test_recorded_weights_match_their_sha256_and_load(name):
    entry = default_manifest()["encoders"][name]
    model = load_default_encoder(name)
    if entry["file"]:
        if entry.get("repo_path"):  # a lineage encoder: in the repository, not in the package
            data = (REPO_ROOT / entry["repo_path"]).read_bytes()
            assert not resources.files("siibra_anchor").joinpath("weights/" + entry["file"]).is_file()
        else:
            data = resources.files("siibra_anchor").joinpath("weights/" + entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert "trained_by" in entry and entry["trained_by"]
    x = torch.rand(5, 1, 32, 32)
    with torch.inference_mode():
        z = model(x)
    assert z.shape[0] == 5
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_every_weight_file_is_recorded_and_the_package_carries_a_few_mb():
    """Each .pt in the package or in training/lineage/ has a manifest entry (and no entry points nowhere);
    the package's weights stay a few MB."""
    manifest = default_manifest()
    man = manifest["encoders"]
    pkg = resources.files("siibra_anchor").joinpath("weights")
    in_pkg = sorted(p.name for p in pkg.iterdir() if p.name.endswith(".pt"))
    in_repo = sorted(p.name for p in (REPO_ROOT / "training" / "lineage").glob("*.pt"))
    assert in_pkg == sorted(e["file"] for e in man.values() if e.get("file") and not e.get("repo_path"))
    assert in_repo == sorted(e["file"] for e in man.values() if e.get("repo_path"))
    assert manifest["default"] in shipped_encoders()
    assert sum(pkg.joinpath(n).stat().st_size for n in in_pkg) < 6e6  # type: ignore[attr-defined]


def test_a_lineage_encoder_outside_a_clone_says_where_to_get_it(monkeypatch, tmp_path):
    """Installed from a wheel there is no training/lineage/: loading a lineage name explains, typed."""
    import siibra_anchor.encoders as enc

    name = lineage_encoders()[0]
    monkeypatch.setattr(enc, "REPO_ROOT", tmp_path)  # where a wheel install would look: nothing there
    with pytest.raises(EncoderError, match="git repository") as err:
        enc.load_default_encoder(name)
    assert "pip install -e ." in str(err.value) and default_manifest()["encoders"][name]["sha256"] in str(err.value)
    with pytest.raises(EncoderError, match="no recorded encoder 'nope'"):
        enc.load_default_encoder("nope")


def test_default_is_the_trained_cnn():
    man = default_manifest()
    assert man["encoders"][man["default"]]["config"]["arch"] == "patch-cnn"
    assert isinstance(load_default_encoder(), PatchEncoder)


def test_tampered_weights_are_refused(tmp_path):
    man = default_manifest()
    entry = man["encoders"][man["default"]]
    data = bytearray(resources.files("siibra_anchor").joinpath("weights/" + entry["file"]).read_bytes())
    data[-1] ^= 0xFF
    p = tmp_path / "bad.pt"
    p.write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError):
        load_encoder(p, entry["config"], sha256=entry["sha256"])


def test_embedding_is_batch_independent_and_deterministic():
    model = load_default_encoder()
    rng = np.random.default_rng(0)
    x = rng.random((40, 32, 32)).astype(np.float32)
    a = embed_patches(model, x, batch_size=7)
    b = embed_patches(model, x, batch_size=40)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert encoder_hash(model) == encoder_hash(load_default_encoder())


def test_encoder_contract_is_checked():
    assert check_encoder(RawPixelEncoder(pool=2), 32) == 256

    class Bad(torch.nn.Module):
        def forward(self, x):
            return x  # (N, C, P, P): not an embedding

    with pytest.raises(EncoderError):
        check_encoder(Bad(), 32)
    with pytest.raises(EncoderError):
        check_encoder("not a module", 32)  # type: ignore[arg-type]


def test_flatten_head_keeps_where_features_are_and_round_trips(tmp_path):
    from siibra_anchor.encoders import build_encoder

    torch.manual_seed(0)
    enc = PatchEncoder(width=8, dim=16, input_pool=2, head="flatten").eval()
    assert enc.config["head"] == "flatten"
    assert check_encoder(enc, 32) == 16
    # the same blob in two corners gives two different embeddings
    x = torch.zeros(2, 1, 32, 32)
    x[0, 0, 2:10, 2:10] = 1.0
    x[1, 0, 22:30, 22:30] = 1.0
    with torch.no_grad():
        z = enc(x)
    assert float(z[0] @ z[1]) < 0.999
    # rebuilt from its config and state dict: identical embeddings
    p = tmp_path / "enc.pt"
    torch.save(enc.state_dict(), p)
    again = load_encoder(p, enc.config)
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), z.numpy(), atol=1e-6)
    assert encoder_hash(again) == encoder_hash(enc)
    with pytest.raises(EncoderError, match="head"):
        build_encoder({"arch": "patch-cnn", "width": 8, "head": "attention"})
    with pytest.raises(EncoderError, match="divisible"):
        build_encoder({"arch": "patch-cnn", "width": 8, "patch_size": 36, "input_pool": 2, "head": "flatten"})
