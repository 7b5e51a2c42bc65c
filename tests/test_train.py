"""Training: losses behave, resume is exact, checkpoints load without unpickling, defaults reach quality."""
from dataclasses import replace

import numpy as np
import pytest
import torch

import gencc
from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.train import TrainConfig, default_config, train
from gencc.runtime.errors import GenccError
from gencc.runtime.metrics import sliced_wasserstein

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
