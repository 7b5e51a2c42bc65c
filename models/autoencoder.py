"""A small convolutional KL-autoencoder (the first stage of latent diffusion, Rombach et al. 2022).

The encoder maps an image in model space ([-1, 1]) to a diagonal Gaussian q(z | x) over a latent of shape
(latent_channels, size / 2^downsamples, same); the decoder maps z back. The loss is the per-element
reconstruction MSE plus 1 / `kl_divisor` times the per-element KL(q(z | x) || N(0, I)): light enough not to
blur reconstructions, strong enough that the latent stays smooth and roughly unit-scale. Diffusion then
runs on z * scale, where scale = 1 / std(z) over training images (the LDM "scale factor").

Two options against the decoder's artefacts, both on by default (docs/QUALITY.md measures them: together
they take the shapes decoder's own Fréchet distance from 2.5x to 1.4-1.5x the floor, and the default
latent model's from 6.4x to 5.0x, the mean of two training runs):
  upsample   "resize" (default): nearest-neighbour x2 then a 3x3 conv, which cannot make checkerboard
             patterns (Odena et al. 2016); "transpose": 4x4 stride-2 transposed convs, the first design,
             which checkpoints without the field were trained with.
  edge_weight  adds edge_weight * mean |grad x_hat - grad x| over horizontal and vertical finite
             differences (default 0.5; 0 in checkpoints without the field): MSE alone is content to round
             corners and soften edges, whose pixels are few.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from gencc.runtime.errors import GenccError

UPSAMPLES = ("transpose", "resize")
LEGACY_OPTIONS = {"upsample": "transpose", "edge_weight": 0.0}   # what a config without the fields trained


@dataclass(frozen=True)
class AEConfig:
    channels: int = 3          # image channels
    size: int = 32             # image height = width
    latent_channels: int = 4   # 4x8x8 for 32x32x3 images: a 12x smaller state, as in LDM's f=4 models
    width: int = 32            # channels at full resolution, doubled once at the first downsampling
    downsamples: int = 2       # each halves the side: 32 -> 8
    groups: int = 8            # GroupNorm groups; must divide width
    kl_divisor: int = 1000     # the loss is recon + KL / kl_divisor: z stays near unit scale, recons stay sharp
    upsample: str = "resize"   # decoder upsampling: "resize" (nearest + 3x3 conv) or "transpose" (4x4 stride 2)
    edge_weight: float = 0.5   # weight of the L1 finite-difference (edge) term of the reconstruction loss

    def __post_init__(self) -> None:
        if self.upsample not in UPSAMPLES:
            raise GenccError(f"autoencoder upsample must be one of {', '.join(UPSAMPLES)}, got {self.upsample!r}")

    def to_dict(self) -> dict:
        return {"arch": "autoencoder", **asdict(self)}

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.size >> self.downsamples
        return self.latent_channels, side, side


def _block(c_in: int, c_out: int, groups: int, **conv) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, **({"kernel_size": 3, "padding": 1} | conv)),
                         nn.GroupNorm(groups, c_out), nn.SiLU())


def _widths(cfg: AEConfig) -> list[int]:
    """Channels at each resolution, full resolution first."""
    return [cfg.width] + [2 * cfg.width] * cfg.downsamples


class Encoder(nn.Module):
    """x (B, C, S, S) -> (mean, logvar) of q(z | x), each (B, *latent_shape)."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        w = _widths(cfg)
        layers = [_block(cfg.channels, w[0], cfg.groups)]
        for i in range(cfg.downsamples):
            layers += [_block(w[i], w[i + 1], cfg.groups, kernel_size=4, stride=2, padding=1),
                       _block(w[i + 1], w[i + 1], cfg.groups)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w[-1], 2 * cfg.latent_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.out(self.body(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)   # LDM's clamp: exp(logvar) stays finite


class Decoder(nn.Module):
    """z (B, *latent_shape) -> x (B, C, S, S) in model space."""

    def __init__(self, cfg: AEConfig):
        super().__init__()
        w = _widths(cfg)[::-1]
        layers = [_block(cfg.latent_channels, w[0], cfg.groups)]
        for i in range(cfg.downsamples):
            layers += [*_upsample(cfg.upsample, w[i], w[i + 1]),
                       nn.GroupNorm(cfg.groups, w[i + 1]), nn.SiLU(), _block(w[i + 1], w[i + 1], cfg.groups)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(w[-1], cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))


def _upsample(kind: str, c_in: int, c_out: int) -> list[nn.Module]:
    if kind == "resize":   # every output pixel sees the same taps: no checkerboard by construction
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1)]
    # ConvTranspose 4x4 stride 2: the compiler rewrites it as a conv plus DepthToSpace
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)]


def edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |d a - d b| over the horizontal and vertical finite differences d of two image batches."""
    dh = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    dw = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    return 0.5 * (dh.abs().mean() + dw.abs().mean())


class Autoencoder(nn.Module):
    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def loss(self, x: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Reparameterised ELBO-style loss: recon MSE (+ edge_weight * edge L1) + KL / kl_divisor, per element."""
        mean, logvar = self.encoder(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
        x_hat = self.decoder(z)
        recon = ((x_hat - x) ** 2).mean()
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).mean()
        losses = {"recon": recon, "kl": kl}
        loss = recon + kl / self.cfg.kl_divisor
        if self.cfg.edge_weight:
            losses["edge"] = edge_l1(x_hat, x)
            loss = loss + self.cfg.edge_weight * losses["edge"]
        return {"loss": loss, **losses}


@torch.no_grad()
def encode_means(encoder: Encoder, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """Posterior means (float32, (N, *latent_shape)) of model-space images x: the deterministic latents
    that latent diffusion is trained on."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.cat([encoder(chunk)[0] for chunk in t.split(batch)]).numpy()


@torch.no_grad()
def decode(decoder: Decoder, z: np.ndarray, batch: int = 512) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    return torch.cat([decoder(chunk) for chunk in t.split(batch)]).numpy()


def latent_scale(latents: np.ndarray) -> float:
    """LDM's scale factor: 1 / std of the latents, so the diffusion model sees unit-variance data."""
    std = float(np.std(latents, dtype=np.float64))
    return 1.0 / std if std > 1e-8 else 1.0
