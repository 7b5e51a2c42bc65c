"""GAN networks and losses (Goodfellow et al. 2014): MLPs for vectors, DCGAN-style conv nets for images.

The discriminator outputs a logit. D minimises -log D(x) - log(1 - D(G(z))); G minimises the
non-saturating -log D(G(z)). Both are BCE-with-logits, which is the numerically stable form. That is the
lecture's game and the default; `GANObjective` offers two common alternatives beside it: the hinge loss
(D: relu(1 - D(x)) + relu(1 + D(G(z))), G: -D(G(z)); Lim & Ye 2017, Miyato et al. 2018) and the R1
penalty gamma / 2 * E |grad_x D(x)|^2 on real data (Mescheder et al. 2018), which damps D's oscillation.

Class-conditional variant (num_classes > 0; labels as one-hot rows, models/guidance.py): G sees
[z, E_g y], a label embedding concatenated with z (Mirza & Osindero 2014); D is a projection
discriminator (Miyato & Koyama 2018), logit = psi(phi(x)) + <E_d y, phi(x)>.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gencc.runtime.errors import GenccError

from .nets import conditional_dict


@dataclass(frozen=True)
class GANConfig:
    sample_shape: tuple[int, ...] = (2,)   # (D,) for vectors, (C, H, W) for images
    latent_dim: int = 16                   # z ~ N(0, I) of this size
    width: int = 256                       # MLP hidden units, or channels of the first conv layer
    num_classes: int = 0                   # > 0: class-conditional G and D

    @property
    def is_image(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def g_inputs(self) -> int:
        """G's input width: z, plus a label embedding of the same size when conditional."""
        return self.latent_dim * (2 if self.num_classes else 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sample_shape"] = list(self.sample_shape)
        return conditional_dict({"arch": "gan", **d})


def _mlp(n_in: int, width: int, n_out: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), act, nn.Linear(width, width), act,
                         nn.Linear(width, width), act, nn.Linear(width, n_out))


class Generator(nn.Module):
    """z -> x in model space. Image outputs end in tanh because images are normalised to [-1, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.num_classes:
            self.embed = nn.Linear(cfg.num_classes, cfg.latent_dim, bias=False)
        if not cfg.is_image:
            self.net = _mlp(cfg.g_inputs, cfg.width, cfg.sample_shape[0], nn.ReLU())
            return
        c, size, _ = cfg.sample_shape
        n_up = _num_upsamplings(size)
        ch = [max(cfg.width >> i, 16) for i in range(n_up + 1)]
        layers: list[nn.Module] = [nn.Linear(cfg.g_inputs, ch[0] * 16), nn.Unflatten(1, (ch[0], 4, 4)),
                                   nn.BatchNorm2d(ch[0]), nn.ReLU()]
        for i in range(n_up):   # each transposed conv doubles the resolution: 4 -> 8 -> 16 ...
            layers += [nn.ConvTranspose2d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.BatchNorm2d(ch[i + 1]),
                       nn.ReLU()]
        layers += [nn.Conv2d(ch[-1], c, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """`y`: one-hot labels (B, num_classes); conditional generators only."""
        return self.net(z if y is None else torch.cat([z, self.embed(y)], dim=1))


class Discriminator(nn.Module):
    """x -> logit of 'real'. LeakyReLU and strided convs, as DCGAN; no normalisation on the input layer."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        if not cfg.is_image:
            self.net = _mlp(cfg.sample_shape[0], cfg.width, 1, nn.LeakyReLU(0.2))
        else:
            self.net = _conv_discriminator(cfg)
        if cfg.num_classes:   # projection onto the features the final linear layer reads
            self.embed = nn.Linear(cfg.num_classes, self.net[-1].in_features, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return self.net(x).squeeze(1)
        features = self.net[:-1](x)
        return self.net[-1](features).squeeze(1) + (self.embed(y) * features).sum(1)


def _conv_discriminator(cfg: GANConfig) -> nn.Sequential:
    c, size, _ = cfg.sample_shape
    n_down = _num_upsamplings(size)
    ch = [max(cfg.width >> (n_down - i), 16) for i in range(n_down + 1)]
    layers: list[nn.Module] = [nn.Conv2d(c, ch[0], 3, padding=1), nn.LeakyReLU(0.2)]
    for i in range(n_down):   # halve the resolution down to 4x4
        layers += [nn.Conv2d(ch[i], ch[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
    layers += [nn.Flatten(), nn.Linear(ch[-1] * 16, 1)]
    return nn.Sequential(*layers)


def _num_upsamplings(size: int) -> int:
    n = int(round(math.log2(size / 4)))
    if size < 8 or 4 * 2 ** n != size:
        raise ValueError(f"GAN image size must be 4 * 2^k >= 8, got {size}")
    return n


GAN_LOSSES = ("ns", "hinge")


@dataclass(frozen=True)
class GANObjective:
    """How D and G are trained; recorded in the checkpoint, so that a resumed run keeps playing one game."""
    loss: str = "ns"   # "ns": the lecture's BCE game with non-saturating G; "hinge"
    r1: float = 0.0    # gamma of the R1 penalty on D's gradient at real data; 0: none

    def __post_init__(self) -> None:
        if self.loss not in GAN_LOSSES:
            raise GenccError(f"GAN loss must be one of {', '.join(GAN_LOSSES)}, got {self.loss!r}")
        if not (isinstance(self.r1, (int, float)) and math.isfinite(self.r1) and self.r1 >= 0):
            raise GenccError(f"r1 (the R1 penalty's gamma) must be a finite number >= 0, got {self.r1!r}")

    def to_dict(self) -> dict:
        return {"loss": self.loss, "r1": float(self.r1)}

    @classmethod
    def from_dict(cls, d: dict | None) -> GANObjective:
        """A checkpoint's record; checkpoints from before the option played the default game."""
        if d is None:
            return cls()
        if not isinstance(d, dict) or set(d) - {"loss", "r1"}:
            raise GenccError(f"checkpoint's GAN objective record must be {{'loss', 'r1'}}, got {d!r}")
        return cls(**d)

    def d_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        if self.loss == "hinge":
            return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        return discriminator_loss(d_real, d_fake)

    def g_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        return -d_fake.mean() if self.loss == "hinge" else generator_loss(d_fake)


def r1_penalty(d_real: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """E |grad_x D(x)|^2 over the batch, for x that requires grad; differentiable (create_graph)."""
    (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
    return grad.pow(2).reshape(len(grad), -1).sum(1).mean()


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """-log D(x) - log(1 - D(G(z))), averaged over the batch."""
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating -log D(G(z)): label 1 for fakes, strong gradients while D still wins."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
