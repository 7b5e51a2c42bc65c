"""GAN objectives beside the lecture's game: the hinge loss and the R1 penalty (models/gan.py).

These check that the recipes run, are recorded in the checkpoint, and that a resume refuses another game;
their effect on sample quality is measured in docs/QUALITY.md, not here.
"""
import numpy as np
import pytest
import torch

from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.gan import GANObjective, r1_penalty
from gencc.models.train import TrainConfig, train
from gencc.runtime.errors import GenccError

MOONS = load_dataset("moons", n=512)
CFG = TrainConfig(steps=4, batch_size=32, ckpt_every=2)


def test_hinge_losses_at_d_zero():
    zero = torch.zeros(8)
    obj = GANObjective("hinge")
    # D outputs 0 everywhere: each hinge is relu(1) = 1, and G's -D(G(z)) is 0.
    assert obj.d_loss(zero, zero).item() == pytest.approx(2.0)
    assert obj.g_loss(zero).item() == pytest.approx(0.0)
    assert GANObjective().d_loss(zero, zero).item() == pytest.approx(2 * np.log(2))


def test_r1_penalty_is_the_squared_input_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 2.0])
    # D(x) = x . w has gradient w at every x: |w|^2 = 9.
    assert r1_penalty(x @ w, x).item() == pytest.approx(9.0)


@pytest.mark.parametrize("objective", [GANObjective("hinge"), GANObjective("ns", 1.0), GANObjective("hinge", 0.5)])
def test_objectives_train_and_are_recorded(tmp_path, objective):
    seen = []
    train("gan", MOONS, tmp_path / "g", CFG, width=16, objective=objective,
          progress=lambda s, n, losses: seen.append(losses))
    assert len(seen) == 4 and all(np.isfinite(list(s.values())).all() for s in seen)
    assert ("r1" in seen[0]) == bool(objective.r1)
    assert ckpt.load_config(tmp_path / "g")["objective"] == objective.to_dict()


def test_default_game_is_recorded_and_old_checkpoints_read_as_it(tmp_path):
    train("gan", MOONS, tmp_path / "g", CFG, width=16)
    assert ckpt.load_config(tmp_path / "g")["objective"] == {"loss": "ns", "r1": 0.0}
    assert GANObjective.from_dict(None) == GANObjective()


def test_resume_keeps_the_objective_and_refuses_another(tmp_path):
    out = tmp_path / "g"
    train("gan", MOONS, out, TrainConfig(steps=2, batch_size=32), width=16, objective=GANObjective("hinge", 1.0))
    train("gan", MOONS, out, CFG, resume=True)   # none given: the checkpoint's own game goes on
    assert ckpt.load_config(out)["objective"] == {"loss": "hinge", "r1": 1.0}
    for other in (GANObjective(), GANObjective("hinge", 0.0)):
        with pytest.raises(GenccError, match="different GAN objective"):
            train("gan", MOONS, out, TrainConfig(steps=6, batch_size=32), resume=True, objective=other)
    assert ckpt.load_config(out)["step"] == 4


def test_bad_objectives_are_refused(tmp_path):
    with pytest.raises(GenccError, match="GAN loss must be one of ns, hinge, got 'wgan'"):
        GANObjective("wgan")
    with pytest.raises(GenccError, match="r1 .* must be a finite number >= 0, got -1"):
        GANObjective("ns", -1.0)
    with pytest.raises(GenccError, match="apply to gan, not 'diffusion'"):
        train("diffusion", MOONS, tmp_path / "d", CFG, objective=GANObjective("hinge"))


def test_cli_gan_loss_and_r1(tmp_path):
    from cli_helpers import assert_user_error, gencc as cli

    out = tmp_path / "g.ckpt"
    args = ("train", "gan", "--data", "moons", "--out", out, "--batch-size", 16, "--width", 16, "--preview-every", 0)
    r = cli(*args, "--steps", 2, "--gan-loss", "hinge", "--r1", 0.5)
    assert r.exit_code == 0, r.output
    assert ckpt.load_config(out)["objective"] == {"loss": "hinge", "r1": 0.5}
    assert_user_error(cli(*args, "--steps", 4, "--resume", "--gan-loss", "ns"), "GAN objective", "hinge", "ns")
    assert_user_error(cli(*args, "--steps", 4, "--resume", "--r1", 0), "GAN objective")
    r = cli(*args, "--steps", 3, "--resume", "--r1", 0.5)   # the same game, said again, is fine
    assert r.exit_code == 0, r.output
    assert_user_error(cli("train", "diffusion", "--data", "moons", "--out", tmp_path / "d", "--gan-loss", "hinge"),
                      "--gan-loss and --r1 apply to gan, not 'diffusion'")
    assert_user_error(cli(*args[:4], "--out", tmp_path / "x", "--gan-loss", "wgan"),
                      "GAN loss must be one of", "'wgan'")
