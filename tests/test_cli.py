"""Every CLI command, through typer's CliRunner: the happy paths and each bad input (one line, exit 2)."""
import json

import numpy as np
import pytest

from cli_helpers import assert_user_error, gencc


def test_help_lists_every_command():
    out = gencc("--help").output
    for cmd in ("train", "sample", "info", "data", "demo"):
        assert cmd in out


def test_data_writes_a_builtin_set(tmp_path):
    r = gencc("data", "moons", "--n", 100, "--seed", 1, "--out", tmp_path / "m.npz")
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:
        assert f["data"].shape == (100, 2) and f["data"].dtype == np.float32
    r = gencc("data", "digits", "--split", "test", "--out", tmp_path / "d.npz")
    with np.load(tmp_path / "d.npz", allow_pickle=False) as f:
        assert f["data"].shape == (297, 1, 8, 8) and f["labels"].shape == (297,)


def test_train_sample_info_round_trip(tmp_path):
    ckpt = tmp_path / "m.ckpt"
    r = gencc("train", "diffusion", "--data", "moons", "--out", ckpt, "--steps", 20, "--batch-size", 64, "--width", 32)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and (ckpt / "config.json").exists()
    r = gencc("train", "diffusion", "--data", "moons", "--out", ckpt, "--steps", 30, "--resume")
    assert r.exit_code == 0, r.output
    assert json.loads((ckpt / "config.json").read_text())["step"] == 30
    for sampler in ("em", "pc", "ancestral", "ode-euler", "ode-heun", "ddim", "dpm2m"):
        out = tmp_path / f"{sampler}.npz"
        r = gencc("sample", ckpt, "--n", 10, "--out", out, "--steps", 5, "--sampler", sampler, "--batch-size", 4)
        assert r.exit_code == 0, r.output
        with np.load(out, allow_pickle=False) as f:
            assert f["samples"].shape == (10, 2) and np.isfinite(f["samples"]).all()
    r = gencc("sample", ckpt, "--n", 50, "--out", tmp_path / "s.npz", "--steps", 5, "--png", tmp_path / "s.png")
    assert r.exit_code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    r = gencc("info", ckpt)
    assert r.exit_code == 0 and "diffusion" in r.output and "moons" in r.output and "30 steps" in r.output


def test_image_and_gan_paths(tmp_path, tiny_digits_diffusion, tiny_digits_gan):
    for ckpt, steps in ((tiny_digits_diffusion, ("--steps", 3)), (tiny_digits_gan, ())):
        r = gencc("sample", ckpt, "--n", 6, *steps, "--out", tmp_path / "x.npz", "--png", tmp_path / "x.png",
                  "--force")
        assert r.exit_code == 0, r.output
        with np.load(tmp_path / "x.npz", allow_pickle=False) as f:
            assert f["samples"].shape == (6, 1, 8, 8)
        assert (tmp_path / "x.png").exists()
    assert "gan" in gencc("info", tiny_digits_gan).output


def test_train_gan_on_a_user_file(tmp_path):
    np.save(tmp_path / "pts.npy", np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32))
    r = gencc("train", "gan", "--data", tmp_path / "pts.npy", "--out", tmp_path / "g", "--steps", 5, "--batch-size", 16)
    assert r.exit_code == 0, r.output
    r = gencc("sample", tmp_path / "g", "--n", 4, "--out", tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (4, 3)


@pytest.fixture
def existing(tmp_path):
    """An output file that a failed command must leave untouched."""
    p = tmp_path / "keep.npz"
    p.write_bytes(b"precious")
    return p


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, tiny_moons_diffusion, existing):
    ck = tiny_moons_diffusion
    cases = [
        (("train", "diffusion", "--data", "nosuchset", "--out", tmp_path / "a"), ["nosuchset"]),
        (("train", "vae", "--data", "moons", "--out", tmp_path / "a"), ["unknown model 'vae'"]),
        (("train", "diffusion", "--data", "moons", "--out", tmp_path / "a", "--steps", 0), ["steps"]),
        (("train", "diffusion", "--data", "moons", "--out", tmp_path / "missing" / "a"), ["does not exist"]),
        (("train", "diffusion", "--data", "moons", "--out", ck), ["already exists"]),
        (("sample", tmp_path / "nope", "--n", 5, "--out", existing), ["does not exist"]),
        (("sample", ck, "--n", 0, "--out", existing), ["n must be a positive integer"]),
        (("sample", ck, "--n", 5, "--steps", 0, "--out", existing), ["steps must be a positive integer"]),
        (("sample", ck, "--n", 5, "--sampler", "euler-x", "--out", existing), ["unknown sampler 'euler-x'"]),
        (("sample", ck, "--n", 5, "--out", tmp_path / "missing" / "s.npz"), ["does not exist"]),
        (("sample", ck, "--n", 5, "--backend", "jax", "--out", existing), ["unknown backend 'jax'"]),
        (("info", tmp_path / "nope"), ["does not exist"]),
        (("data", "mnist", "--out", tmp_path / "d.npz"), ["unknown dataset 'mnist'"]),
        (("data", "moons", "--n", -3, "--out", tmp_path / "d.npz"), ["n must be a positive integer"]),
    ]
    for args, words in cases:
        assert_user_error(gencc(*args), *words)
    assert existing.read_bytes() == b"precious"


def test_corrupt_checkpoints_are_clear_errors(tmp_path, tiny_moons_diffusion):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_moons_diffusion, bad)
    (bad / "weights.safetensors").write_bytes(b"\x00" * 64)
    assert_user_error(gencc("sample", bad, "--n", 2, "--out", tmp_path / "s.npz"), "corrupt")
    (bad / "config.json").write_text("{not json")
    assert_user_error(gencc("info", bad), "corrupt")
    (bad / "config.json").write_text(json.dumps({"format": "gencc-checkpoint", "version": 99}))
    assert_user_error(gencc("info", bad), "version 99")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(gencc("sample", empty, "--n", 2, "--out", tmp_path / "s.npz"), "not a gencc checkpoint")


def test_bad_data_files_are_clear_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]], np.float32))
    np.savez(tmp_path / "pickle.npz", data=np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "three_d.npy", np.zeros((4, 2, 2), np.float32))
    for name, word in (("nan.npy", "NaN"), ("pickle.npz", "pickle"), ("three_d.npy", "3 dims")):
        r = gencc("train", "diffusion", "--data", tmp_path / name, "--out", tmp_path / "c")
        assert_user_error(r, name)
        assert word.lower() in r.output.lower(), r.output


@pytest.mark.slow
def test_demo_quick_runs_the_whole_pipeline(tmp_path):
    r = gencc("demo", "--quick", "--out", tmp_path / "demo")
    assert r.exit_code == 0, r.output
    for name in ("moons-diffusion", "digits-diffusion", "digits-gan"):
        for suffix in (".ckpt", ".gencc", ".npz", ".png"):
            assert (tmp_path / "demo" / f"{name}{suffix}").exists(), name + suffix
    with np.load(tmp_path / "demo" / "digits-diffusion.npz", allow_pickle=False) as f:
        assert f["samples"].shape == (100, 1, 8, 8)
    assert "sliced Wasserstein" in r.output and "finished in" in r.output
