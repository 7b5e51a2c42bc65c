"""Latent diffusion: the autoencoder, two-stage training and resume, the checkpoint, and its bad inputs."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

import gencc
from cli_helpers import assert_user_error, gencc as run_cli
from gencc.models import checkpoint as ckpt
from gencc.models.autoencoder import decode, encode_means
from gencc.models.data import load_dataset
from gencc.models.latent import load_autoencoder, load_latent_checkpoint, train_autoencoder, train_latent_diffusion
from gencc.models.train import TrainConfig
from gencc.runtime.errors import GenccError
from gencc.runtime.normalize import Normalization

pytestmark = pytest.mark.slow   # every test here trains a (tiny) network

TINY = TrainConfig(steps=4, batch_size=8, lr=2e-3, ckpt_every=2)


def test_autoencoder_round_trips_and_its_loss_goes_down(tmp_path):
    ds = load_dataset("shapes", n=64)
    losses = []
    cfg = TrainConfig(steps=40, batch_size=16, lr=3e-3, ckpt_every=40)
    train_autoencoder(ds, tmp_path / "ae", cfg, width=8, progress=lambda s, n, logs: losses.append(logs["recon"]))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    model, config = load_autoencoder(tmp_path / "ae")
    norm = Normalization.from_dict(config["data"]["normalization"])
    x = norm.encode(load_dataset("shapes", n=16, split="test").data)
    z = encode_means(model.encoder, x)
    assert z.shape == (16, 4, 8, 8) and config["latent"]["shape"] == [4, 8, 8]
    recon = decode(model.decoder, z)
    assert recon.shape == x.shape
    assert ((recon - x) ** 2).mean() < ((x - x.mean()) ** 2).mean()   # better than the mean image
    assert 0 < config["latent"]["scale"] < 100


def test_both_stages_resume_exactly(tmp_path):
    ds = load_dataset("shapes", n=32)
    whole = tmp_path / "whole"
    train_latent_diffusion(ds, whole, TINY, TINY, width=8, ae_width=8)
    half = replace(TINY, steps=2)
    parts = tmp_path / "parts"
    train_latent_diffusion(ds, parts, half, half, width=8, ae_width=8)   # both stages to step 2
    with pytest.raises(GenccError, match="frozen at step 2"):
        train_latent_diffusion(ds, parts, TINY, TINY, width=8, ae_width=8, resume=True)
    # The autoencoder resumes to step 4 while the latent stage has not started; then the latent stage.
    shutil.rmtree(parts / "latent")
    train_latent_diffusion(ds, parts, TINY, half, width=8, ae_width=8, resume=True)
    train_latent_diffusion(ds, parts, TINY, TINY, width=8, ae_width=8, resume=True)
    for stage in ("autoencoder", "latent"):
        a, b = ckpt.load_weights(whole / stage), ckpt.load_weights(parts / stage)
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), stage
    lc = load_latent_checkpoint(parts)
    assert lc.latent_shape == (4, 8, 8) and lc.sample_shape == (3, 32, 32)
    assert ckpt.load_config(parts / "latent")["data"]["normalization"]["scale"] == [1.0]


def test_latent_checkpoint_samples_and_decodes_previews(tiny_shapes_latent):
    m = gencc.load(tiny_shapes_latent)
    previews = {}
    x = m.sample(3, steps=6, seed=2, callback=lambda k, s: previews.setdefault(k, m.decode(s)))
    assert m.kind == "latent-diffusion" and m.backend == "torch" and x.shape == (3, 3, 32, 32)
    assert previews[0].shape == (3, 3, 32, 32) and np.isfinite(previews[5]).all()
    # per-sample noise: the same samples at another batch size, up to BLAS blocking (torch on 2 threads)
    np.testing.assert_allclose(x[1:], m.sample(2, steps=6, seed=2, start=1), atol=1e-5)
    with pytest.raises(GenccError, match=r"shape \(B, 4, 8, 8\)"):
        m.decode(np.zeros((2, 3, 32, 32), np.float32))


def test_reusing_an_autoencoder_copies_it(tiny_shapes_latent, tmp_path):
    ds = load_dataset("shapes", n=32)
    out = tmp_path / "reuse"
    results = train_latent_diffusion(ds, out, TINY, TINY, width=8, autoencoder=tiny_shapes_latent)
    assert results["autoencoder"] is None
    assert (out / "autoencoder" / "weights.safetensors").read_bytes() == \
        (tiny_shapes_latent / "autoencoder" / "weights.safetensors").read_bytes()


def test_mismatched_latent_shape_is_refused(tiny_shapes_latent, tmp_path):
    # An autoencoder with 2 latent channels put in place of the 4-channel one the latent model learned.
    other = tmp_path / "other"
    ds = load_dataset("shapes", n=16)
    train_autoencoder(ds, tmp_path / "ae2", replace(TINY, steps=1), width=8)
    config = ckpt.load_config(tmp_path / "ae2")
    shutil.copytree(tiny_shapes_latent, other)
    shutil.rmtree(other / "autoencoder")
    from gencc.models.autoencoder import AEConfig, Autoencoder
    cfg = AEConfig(width=8, latent_channels=2)
    net = Autoencoder(cfg)
    config = {**config, "net": cfg.to_dict(), "latent": {"shape": [2, 8, 8], "scale": 1.0}}
    config = {k: v for k, v in config.items() if k not in ("format", "version")}
    ckpt.save_checkpoint(other / "autoencoder", config, net.state_dict(), {"step": 1})
    with pytest.raises(GenccError, match=r"shape \(4, 8, 8\).*latent shape is \(2, 8, 8\)"):
        gencc.load(other)
    with pytest.raises(GenccError, match=r"works on shape \(4, 8, 8\).*latents of shape \(2, 8, 8\)"):
        train_latent_diffusion(ds, other, replace(TINY, steps=1), TINY, resume=True)


def test_cli_train_info_sample(tmp_path):
    data = tmp_path / "shapes.npz"
    assert run_cli("data", "shapes", "--n", 16, "--out", data).exit_code == 0
    out = tmp_path / "ld.ckpt"
    r = run_cli("train", "latent-diffusion", "--data", data, "--out", out, "--ae-steps", 2, "--steps", 2,
                "--batch-size", 8, "--width", 8)
    assert r.exit_code == 0, r.output
    assert "train autoencoder" in r.output and "train latent" in r.output and f"wrote {out}" in r.output
    r = run_cli("info", out)
    assert r.exit_code == 0 and "latent:      shape (4, 8, 8)" in r.output, r.output
    r = run_cli("info", out, "--json", tmp_path / "info.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "info.json").read_text())["latent_shape"] == [4, 8, 8]
    r = run_cli("sample", out, "--n", 3, "--steps", 4, "--out", tmp_path / "s.npz")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (3, 3, 32, 32)
    again = run_cli("train", "latent-diffusion", "--data", data, "--out", out, "--autoencoder", out)
    assert_user_error(again, "already exists", "--resume")


def test_cli_bad_autoencoders(tiny_shapes_latent, tiny_digits_diffusion, tmp_path):
    data = tmp_path / "shapes.npz"
    run_cli("data", "shapes", "--n", 8, "--out", data)
    out = tmp_path / "x.ckpt"

    def train(*extra):
        return run_cli("train", "latent-diffusion", "--data", data, "--out", out, "--steps", 1, *extra)

    assert_user_error(train("--autoencoder", tiny_digits_diffusion), "is a diffusion checkpoint, not an autoencoder")
    art = tmp_path / "pixel.gencc"
    art.mkdir()
    (art / "manifest.json").write_text("{}")
    assert_user_error(train("--autoencoder", art), "is a compiled artifact", "--autoencoder")
    assert_user_error(train("--autoencoder", tmp_path / "nope"), "does not exist")
    assert_user_error(run_cli("train", "latent-diffusion", "--data", "digits", "--out", out, "--autoencoder",
                              tiny_shapes_latent), "(3, 32, 32)", "(1, 8, 8)")
    assert_user_error(run_cli("train", "latent-diffusion", "--data", "moons", "--out", out), "needs images")
    assert_user_error(run_cli("train", "diffusion", "--data", "moons", "--out", out, "--autoencoder",
                              tiny_shapes_latent), "apply to latent-diffusion")
    assert_user_error(run_cli("train", "latent-diffusion", "--data", data, "--out", out, "--ae-steps", 0),
                      "steps must be a positive integer")
    assert not out.exists()   # nothing was written by any refused command
    assert_user_error(run_cli("sample", tiny_shapes_latent / "autoencoder", "--n", 2, "--out", tmp_path / "s.npz"),
                      "autoencoder checkpoint")


def test_a_64px_image_folder_gets_a_16x16_latent(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ds = load_dataset(str(folder))
    out = tmp_path / "ld"
    train_latent_diffusion(ds, out, replace(TINY, steps=1), replace(TINY, steps=1), width=8, ae_width=8)
    m = gencc.load(out)
    assert m.latent_shape == (4, 16, 16) and m.sample(2, steps=2).shape == (2, 3, 64, 64)
