"""The autoencoder's options against decoder artefacts (models/autoencoder.py): resize-then-conv upsampling
and the edge L1 term. Their effect on quality is measured in docs/QUALITY.md; here, that they run, are
recorded, and that checkpoints from before them still load as what they were."""
import pytest
import torch

from gencc.models.autoencoder import AEConfig, Autoencoder, edge_l1
from gencc.models.data import load_dataset
from gencc.models.factory import config_from_dict
from gencc.models.latent import load_autoencoder, train_autoencoder
from gencc.models.train import TrainConfig
from gencc.runtime.errors import GenccError


def test_edge_l1_of_shifted_edges():
    a = torch.zeros(1, 1, 4, 4)
    b = a.clone()
    b[..., :, 2:] = 1.0   # one vertical edge: 4 of the 12 horizontal differences are 1
    assert edge_l1(a, a).item() == 0.0
    assert edge_l1(b, a).item() == pytest.approx(0.5 * 4 / 12)
    assert edge_l1(b + 3.0, b).item() == 0.0   # a constant offset has no edges


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_decoders_shape_and_layers(upsample):
    cfg = AEConfig(width=8, upsample=upsample)
    ae = Autoencoder(cfg)
    kinds = {type(m).__name__ for m in ae.decoder.modules()}
    assert ("Upsample" in kinds) == (upsample == "resize") and ("ConvTranspose2d" in kinds) == (upsample != "resize")
    assert ae.decoder(torch.zeros(2, *cfg.latent_shape)).shape == (2, 3, 32, 32)


def test_a_config_from_before_the_options_is_the_transpose_decoder_without_edge_term():
    old = {"arch": "autoencoder", "channels": 3, "size": 32, "latent_channels": 4, "width": 8, "downsamples": 2,
           "groups": 8, "kl_divisor": 1000}
    cfg = config_from_dict(old)
    assert cfg.upsample == "transpose" and cfg.edge_weight == 0.0


def test_bad_upsample_is_refused_by_name():
    with pytest.raises(GenccError, match="upsample must be one of transpose, resize, got 'bilinear'"):
        config_from_dict({"arch": "autoencoder", "upsample": "bilinear"})


def test_edge_term_trains_and_options_are_recorded(tmp_path):
    seen = []
    opts = {"upsample": "resize", "edge_weight": 0.5}
    train_autoencoder(load_dataset("shapes", n=16), tmp_path / "ae", TrainConfig(steps=2, batch_size=4),
                      width=8, options=opts, progress=lambda s, n, losses: seen.append(losses))
    assert all("edge" in s and s["edge"] > 0 for s in seen)
    assert seen[0]["loss"] == pytest.approx(seen[0]["recon"] + seen[0]["kl"] / 1000 + 0.5 * seen[0]["edge"], rel=1e-5)
    _, config = load_autoencoder(tmp_path / "ae")
    assert config["net"]["upsample"] == "resize" and config["net"]["edge_weight"] == 0.5


def test_checkpoint_config_checks_the_options(tmp_path):
    import json

    train_autoencoder(load_dataset("shapes", n=16), tmp_path / "ae", TrainConfig(steps=1, batch_size=4), width=8)
    path = tmp_path / "ae" / "config.json"
    good = json.loads(path.read_text())
    for field, bad in (("upsample", "bilinear"), ("edge_weight", -1.0), ("edge_weight", "big")):
        path.write_text(json.dumps({**good, "net": {**good["net"], field: bad}}))
        with pytest.raises(GenccError, match=f"net '{field}' must be"):
            load_autoencoder(tmp_path / "ae")
