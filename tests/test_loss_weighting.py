"""min-SNR-gamma loss weighting, an option beside the lecture's lambda = sigma^2 (models/train.py): it runs,
is recorded, a resume refuses another weighting, and the default loss is unchanged."""
import numpy as np
import pytest
import torch

from gencc.models import checkpoint as ckpt
from gencc.models.data import load_dataset
from gencc.models.train import LossWeighting, TrainConfig, train
from gencc.runtime.errors import GenccError
from gencc.runtime.sde import VPSDE

MOONS = load_dataset("moons", n=512)
CFG = TrainConfig(steps=4, batch_size=32, ckpt_every=2)


def test_min_snr_weights():
    sde = VPSDE()
    t = torch.tensor([1e-3, 0.05, 0.5, 1.0])
    w = LossWeighting("min-snr", 5.0).weights(sde, t)
    snr = torch.exp(-sde.int_beta(t)) / -torch.expm1(-sde.int_beta(t))
    torch.testing.assert_close(w, torch.clamp(5.0 / snr, max=1.0), rtol=1e-5, atol=0)
    assert w[0] < 0.01 and w[-1] == 1.0   # nearly clean steps are down-weighted, noisy ones kept


def test_min_snr_trains_and_is_recorded_and_resume_refuses_another(tmp_path):
    seen = []
    out = tmp_path / "d"
    train("diffusion", MOONS, out, replace_steps(2), width=16, weighting=LossWeighting("min-snr", 5.0),
          progress=lambda s, n, losses: seen.append(losses["loss"]))
    assert np.isfinite(seen).all()
    assert ckpt.load_config(out)["loss_weighting"] == {"kind": "min-snr", "gamma": 5.0}
    train("diffusion", MOONS, out, CFG, resume=True)   # none given: keeps its own
    for other in (LossWeighting(), LossWeighting("min-snr", 1.0)):
        with pytest.raises(GenccError, match="different loss weighting"):
            train("diffusion", MOONS, out, TrainConfig(steps=6, batch_size=32), resume=True, weighting=other)


def replace_steps(n):
    return TrainConfig(steps=n, batch_size=32, ckpt_every=n)


def test_default_is_recorded_and_refused_options(tmp_path):
    train("diffusion", MOONS, tmp_path / "d", CFG, width=16)
    assert ckpt.load_config(tmp_path / "d")["loss_weighting"] == {"kind": "sigma2"}
    assert LossWeighting.from_dict(None) == LossWeighting()
    with pytest.raises(GenccError, match="min-SNR gamma must be a finite number > 0, got 0"):
        LossWeighting("min-snr", 0)
    with pytest.raises(GenccError, match="applies to diffusion, not 'gan'"):
        train("gan", MOONS, tmp_path / "g", CFG, weighting=LossWeighting("min-snr"))


def test_cli_min_snr(tmp_path):
    from cli_helpers import assert_user_error, gencc as cli

    out = tmp_path / "m.ckpt"
    args = ("train", "diffusion", "--data", "moons", "--out", out, "--batch-size", 16, "--width", 16,
            "--preview-every", 0)
    r = cli(*args, "--steps", 2, "--min-snr", 5)
    assert r.exit_code == 0, r.output
    assert ckpt.load_config(out)["loss_weighting"] == {"kind": "min-snr", "gamma": 5.0}
    assert_user_error(cli(*args, "--steps", 4, "--resume", "--min-snr", 1), "loss weighting", "5.0", "1.0")
    assert_user_error(cli("train", "gan", "--data", "moons", "--out", tmp_path / "g", "--min-snr", 5),
                      "--min-snr applies to diffusion and latent-diffusion, not 'gan'")


def test_latent_diffusion_takes_the_weighting(tmp_path):
    from gencc.models.latent import train_latent_diffusion

    tiny = TrainConfig(steps=2, batch_size=4, ckpt_every=2)
    train_latent_diffusion(load_dataset("shapes", n=8), tmp_path / "ld", tiny, tiny, width=8, ae_width=8,
                           weighting=LossWeighting("min-snr", 2.0))
    assert ckpt.load_config(tmp_path / "ld" / "latent")["loss_weighting"] == {"kind": "min-snr", "gamma": 2.0}
