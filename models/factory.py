"""Build networks from the config dicts stored in checkpoints, and pick defaults per dataset."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from gencc.runtime.errors import GenccError

from .gan import Discriminator, GANConfig, Generator
from .nets import MLPConfig, MLPEps
from .unet import UNetConfig, UNetEps


def eps_net_config(sample_shape: tuple[int, ...], width: int | None = None,
                   num_classes: int = 0) -> MLPConfig | UNetConfig:
    """An MLP for (D,) vectors, a UNet for (C, H, W) images; class-conditional when num_classes > 0."""
    if len(sample_shape) == 1:
        return MLPConfig(data_dim=sample_shape[0], num_classes=num_classes, **({"width": width} if width else {}))
    c, h, w = sample_shape
    if h != w or h % 4:
        raise GenccError(f"the UNet needs square images with a side divisible by 4, got {h}x{w}")
    mults = (1, 2) if h <= 8 else (1, 2, 2)
    return UNetConfig(channels=c, size=h, mults=mults, num_classes=num_classes, **({"width": width} if width else {}))


def gan_config(sample_shape: tuple[int, ...], width: int | None = None, num_classes: int = 0) -> GANConfig:
    latent_dim = 64 if len(sample_shape) == 3 else 16
    return GANConfig(sample_shape=sample_shape, latent_dim=latent_dim, width=width or 128, num_classes=num_classes)


def config_from_dict(d: dict):
    d = dict(d)
    arch = d.pop("arch", None)
    try:
        if arch == "mlp":
            return MLPConfig(**d)
        if arch == "unet":
            return UNetConfig(**{**d, "mults": tuple(d["mults"])})
        if arch == "gan":
            return GANConfig(**{**d, "sample_shape": tuple(d["sample_shape"])})
        if arch == "autoencoder":
            from .autoencoder import LEGACY_OPTIONS, AEConfig
            return AEConfig(**{**LEGACY_OPTIONS, **d})   # configs from before the options: what they trained
    except (TypeError, KeyError) as e:
        raise GenccError(f"malformed {arch} network config {d!r}: {e}") from None
    raise GenccError(f"unknown network architecture {arch!r}; expected 'mlp', 'unet', 'gan' or 'autoencoder'")


def build_eps_net(cfg: MLPConfig | UNetConfig) -> nn.Module:
    return MLPEps(cfg) if isinstance(cfg, MLPConfig) else UNetEps(cfg)


def build_gan(cfg: GANConfig) -> tuple[Generator, Discriminator]:
    return Generator(cfg), Discriminator(cfg)


def weights_builder(config: dict) -> Callable[[], nn.Module]:
    """Builds the network a checkpoint's weights file holds, from its config: the generator of a GAN, the
    autoencoder of an autoencoder checkpoint, else the (EMA) eps-network."""
    cfg = config_from_dict(config["net"])
    if config["model"] == "gan":
        return lambda: build_gan(cfg)[0]
    if config["model"] == "autoencoder":
        from .autoencoder import Autoencoder
        return lambda: Autoencoder(cfg)
    return lambda: build_eps_net(cfg)


def load_net(path: str | Path, config: dict) -> nn.Module:
    """The network of checkpoint `path`, whose `config` is checked against its weights file before anything
    is built (checkpoint.load_network), holding those weights, in eval mode without gradients: to sample
    with or export, not to train on."""
    from . import checkpoint as ckpt

    return ckpt.load_network(path, config, weights_builder(config)).eval().requires_grad_(False)
