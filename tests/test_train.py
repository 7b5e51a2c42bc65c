"""Training: losses behave, resume is exact, checkpoints load without unpickling, defaults reach quality."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import gencc
from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.metrics import sliced_wasserstein
from gencc.models.train import TrainConfig, default_config, train
from gencc.runtime.errors import GenccError

MOONS = load_dataset("moons", n=4000)


def _losses(model, steps, **kw):
    seen = []
    cfg = TrainConfig(steps=steps, ckpt_every=10_000, **kw)
    return cfg, lambda s, total, losses: seen.append(losses), seen


def test_diffusion_loss_starts_near_one_and_falls(tmp_path):
    cfg, progress, seen = _losses("diffusion", 300, batch_size=256, lr=2e-3)
    train("diffusion", MOONS, tmp_path / "c", cfg, width=64, progress=progress)
    first = np.mean([s["loss"] for s in seen[:10]])
    last = np.mean([s["loss"] for s in seen[-30:]])
    # An untrained eps-network predicts ~0, so the per-element DSM loss starts near E[eps^2] = 1.
    assert 0.6 < first < 1.6
    assert last < 0.6 * first


def test_gan_losses_start_at_the_minimax_values_and_generator_improves(tmp_path):
    held_out = load_dataset("moons", split="test", n=2000).data
    train("gan", MOONS, tmp_path / "init", TrainConfig(steps=1, lr=1e-3))
    sw_init = sliced_wasserstein(gencc.load(tmp_path / "init").sample(2000, seed=0), held_out)
    cfg, progress, seen = _losses("gan", 1000, batch_size=256, lr=1e-3)
    train("gan", MOONS, tmp_path / "g", cfg, progress=progress)
    # At D = 1/2 everywhere: d_loss = 2 log 2 and the non-saturating g_loss = log 2.
    assert seen[0]["d_loss"] == pytest.approx(2 * np.log(2), abs=0.25)
    assert seen[0]["g_loss"] == pytest.approx(np.log(2), abs=0.25)
    assert all(np.isfinite(list(s.values())).all() for s in seen)
    sw = sliced_wasserstein(gencc.load(tmp_path / "g").sample(2000, seed=0), held_out)
    assert sw < 0.3 * sw_init and sw < 0.15, f"GAN did not learn moons: SW {sw:.3f} (untrained {sw_init:.3f})"


@pytest.mark.parametrize("model", ["diffusion", "gan"])
def test_resume_reaches_the_same_weights(tmp_path, model):
    cfg = TrainConfig(steps=40, batch_size=32, ckpt_every=20)
    train(model, MOONS, tmp_path / "full", cfg, width=32)
    train(model, MOONS, tmp_path / "half", replace(cfg, steps=20), width=32)
    train(model, MOONS, tmp_path / "half", cfg, resume=True)
    a, b = ckpt.load_weights(tmp_path / "full"), ckpt.load_weights(tmp_path / "half")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert ckpt.load_config(tmp_path / "half")["step"] == 40


def test_existing_output_is_not_overwritten(tmp_path, tiny_moons_diffusion):
    before = (tiny_moons_diffusion / "weights.safetensors").read_bytes()
    with pytest.raises(GenccError, match="already exists; pass --resume"):
        train("diffusion", MOONS, tiny_moons_diffusion, TrainConfig(steps=5))
    assert (tiny_moons_diffusion / "weights.safetensors").read_bytes() == before


def test_checkpoint_layout_and_safe_loading(tiny_moons_diffusion):
    config = ckpt.load_config(tiny_moons_diffusion)
    assert config["format"] == "gencc-checkpoint" and config["model"] == "diffusion"
    assert config["sde"] == {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "t_eps": 1e-3}
    assert config["data"]["sample_shape"] == [2]
    state = ckpt.load_train_state(tiny_moons_diffusion)   # weights_only=True inside
    assert state["step"] == 30


def test_a_pickle_bomb_in_train_state_is_refused(tmp_path, tiny_moons_diffusion):
    import shutil

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pwned')",))

    bad = tmp_path / "bad"
    shutil.copytree(tiny_moons_diffusion, bad)
    torch.save({"step": Evil()}, bad / "train_state.pt")
    with pytest.raises(GenccError, match="corrupt or unsafe"):
        ckpt.load_train_state(bad)


def test_bad_settings_are_refused():
    with pytest.raises(GenccError, match="steps must be a positive integer"):
        TrainConfig(steps=0)
    with pytest.raises(GenccError, match="lr must be a positive number"):
        TrainConfig(lr=-1.0)
    with pytest.raises(GenccError, match="unknown model 'vae'"):
        default_config("vae", "vector")


def test_samples_come_back_in_data_units(tiny_digits_diffusion, tiny_digits_gan):
    for path in (tiny_digits_diffusion, tiny_digits_gan):
        x = gencc.load(path).sample(3, steps=4, seed=0)
        assert x.shape == (3, 1, 8, 8) and x.dtype == np.float32
        # Model space is [-1, 1] for digits; data units are [0, 1]: decode maps -1 -> 0 and 1 -> 1.
        m = gencc.load(path)
        np.testing.assert_allclose(m.normalization.decode(np.array([-1.0, 1.0], np.float32)), [0.0, 1.0])


def test_torch_backend_is_batch_invariant(tiny_moons_diffusion, tiny_moons_gan):
    for path in (tiny_moons_diffusion, tiny_moons_gan):
        m = gencc.load(path)
        runs = [m.sample(20, steps=10, seed=7, batch_size=b) for b in (1, 7, 64)]
        # Same noise and same loop; only BLAS blocking may differ across batch sizes.
        np.testing.assert_allclose(runs[0], runs[1], atol=1e-5)
        np.testing.assert_allclose(runs[0], runs[2], atol=1e-5)


@pytest.mark.slow
def test_moons_defaults_reach_the_real_data_floor(tmp_path):
    """Trained with the default budget, samples are within 2x the train-vs-held-out SW distance."""
    train_set = load_dataset("moons")
    cfg = default_config("diffusion", "vector")
    train("diffusion", train_set, tmp_path / "m", cfg)
    held_out = load_dataset("moons", split="test").data
    samples = gencc.load(tmp_path / "m").sample(len(held_out), steps=200, seed=0)
    floor = sliced_wasserstein(train_set.data[: len(held_out)], held_out)
    sw = sliced_wasserstein(samples, held_out)
    assert sw <= 2 * floor, f"SW(samples, held-out) = {sw:.4f}, floor {floor:.4f}"


# --- resume continues the same run, or says why not (issue 13, item 4) ---------------------------------

SMALL = TrainConfig(steps=5, batch_size=32, ckpt_every=5)


@pytest.fixture
def started(tmp_path):
    """A 5-step moons run at width 32, to be resumed."""
    train("diffusion", MOONS, tmp_path / "m.ckpt", SMALL, width=32)
    return tmp_path / "m.ckpt"


def _refused(out, *args, match, **kw):
    before = (out / ckpt.WEIGHTS).read_bytes()
    with pytest.raises(GenccError, match=match):
        train("diffusion", *args, **kw)
    assert (out / ckpt.WEIGHTS).read_bytes() == before   # nothing trained, nothing written


def test_resume_refuses_another_builtin_dataset(started):
    swissroll = load_dataset("swissroll", n=4000)
    _refused(started, swissroll, started, replace(SMALL, steps=10), resume=True,
             match=r"different data: it has 'moons', this run asks for 'swissroll'")


def test_resume_compares_user_data_by_content(tmp_path):
    from gencc.models.data import Dataset

    pts = np.random.default_rng(0).standard_normal((256, 3)).astype(np.float32)
    out = tmp_path / "u.ckpt"
    train("diffusion", Dataset(pts, None, str(tmp_path / "pts.npy"), "vector"), out, SMALL, width=32)
    other = Dataset(pts + 1, None, str(tmp_path / "pts.npy"), "vector")
    _refused(out, other, out, replace(SMALL, steps=10), resume=True, match=r"different data content \(sha256\)")
    moved = Dataset(pts.copy(), None, str(tmp_path / "moved.npy"), "vector")   # same data, another path: fine
    assert train("diffusion", moved, out, replace(SMALL, steps=10), resume=True).steps == 10


def test_resume_accepts_a_builtin_saved_to_a_file(started, tmp_path):
    from gencc.models.data import Dataset

    as_file = Dataset(MOONS.data.copy(), None, str(tmp_path / "moons.npy"), "vector")   # same content
    assert train("diffusion", as_file, started, replace(SMALL, steps=10), resume=True).steps == 10


@pytest.mark.parametrize("kw,match", [
    ({"width": 64}, r"different width: it has 32, this run asks for 64"),
    ({"normalization": "identity"}, r"different normalization"),
])
def test_resume_refuses_another_network_or_normalization(started, kw, match):
    from gencc.runtime.normalize import Normalization

    if kw.get("normalization") == "identity":
        kw = {"normalization": Normalization((0.0,), (1.0,), (2,))}
    _refused(started, MOONS, started, replace(SMALL, steps=10), resume=True, match=match, **kw)


def test_resume_refuses_another_seed(started):
    _refused(started, MOONS, started, replace(SMALL, steps=10, seed=1), resume=True,
             match=r"different seed: it has 0, this run asks for 1")


def test_resume_may_change_steps_batch_size_lr_and_interval(started):
    cfg = TrainConfig(steps=8, batch_size=16, lr=5e-4, ckpt_every=2)
    assert train("diffusion", MOONS, started, cfg, width=32, resume=True).steps == 8
    assert ckpt.load_config(started)["train"]["batch_size"] == 16


def test_resume_refuses_to_make_a_model_conditional(tmp_path, tiny_digits_diffusion):
    import shutil

    out = tmp_path / "d.ckpt"
    shutil.copytree(tiny_digits_diffusion, out)
    cfg = replace(default_config("diffusion", "image"), steps=6, batch_size=8)
    _refused(out, load_dataset("digits"), out, cfg, resume=True, conditional=True,
             match=r"different conditioning: it has 'unconditional', this run asks for 'conditional'")


def test_cli_resume_refuses_other_data_and_options_in_one_line(tmp_path):
    from cli_helpers import assert_user_error, gencc as cli

    out = tmp_path / "moons.ckpt"
    r = cli("train", "diffusion", "--data", "moons", "--out", out, "--steps", 5, "--batch-size", 16, "--width", 32)
    assert r.exit_code == 0, r.output
    for args, words in [(("--data", "swissroll"), ("data", "'moons'", "'swissroll'")),
                        (("--data", "moons", "--width", 64), ("width", "32", "64")),
                        (("--data", "moons", "--seed", 2), ("seed", "0", "2")),
                        (("--data", "moons", "--steps", 3), ("at step 5 already, past --steps 3",))]:
        r = cli("train", "diffusion", "--steps", 10, *args, "--out", out, "--resume")
        assert_user_error(r, *words)
    assert ckpt.load_config(out)["step"] == 5


def test_cli_resume_keeps_the_runs_settings_and_says_when_it_is_done(tmp_path):
    from cli_helpers import gencc as cli

    out = tmp_path / "m.ckpt"
    r = cli("train", "diffusion", "--data", "moons", "--out", out, "--steps", 6, "--batch-size", 16, "--width", 32,
            "--seed", 3, "--preview-every", 0)
    assert r.exit_code == 0, r.output
    r = cli("train", "diffusion", "--data", "moons", "--out", out, "--steps", 8, "--resume", "--preview-every", 0)
    assert r.exit_code == 0, r.output
    train_cfg = ckpt.load_config(out)["train"]
    assert (train_cfg["batch_size"], train_cfg["seed"], train_cfg["steps"]) == (16, 3, 8)
    r = cli("train", "diffusion", "--data", "moons", "--out", out, "--resume", "--preview-every", 0)
    assert r.exit_code == 0, r.output
    assert "already trained to step 8" in r.output and ", ," not in r.output


def test_train_help_lists_what_may_change_on_resume():
    from cli_helpers import gencc as cli

    out = " ".join(cli("train", "--help").output.replace("│", " ").split())
    assert "may change on resume: --steps, --batch-size, --lr, --ckpt-every" in out


def test_a_malformed_data_hash_is_refused(started):
    import json

    config = json.loads((started / ckpt.CONFIG).read_text())
    config["data"]["sha256"] = 5
    (started / ckpt.CONFIG).write_text(json.dumps(config))
    with pytest.raises(GenccError, match="data sha256 must be 64 lowercase hex digits, got 5"):
        train("diffusion", MOONS, started, replace(SMALL, steps=10), resume=True)
