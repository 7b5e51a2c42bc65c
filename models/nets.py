"""Noise-prediction network eps_theta(x, t) for vectors: an MLP with a sinusoidal time embedding."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sin/cos features of 1000 t (t in [0, 1]), shape (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None, :]   # scale by 1000: DDPM's integer-step range
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


@dataclass(frozen=True)
class MLPConfig:
    data_dim: int = 2
    width: int = 256        # hidden units; 256 fits the vector units and learns 2-D sets in a minute
    depth: int = 3          # hidden layers after the input projection
    emb_dim: int = 32       # sinusoidal features of t
    num_classes: int = 0    # > 0: class-conditional, with one more (null) class for guidance (models/guidance.py)

    def to_dict(self) -> dict:
        return conditional_dict({"arch": "mlp", **asdict(self)})


def conditional_dict(d: dict) -> dict:
    """An unconditional net's config without num_classes, so it reads exactly as before conditioning existed."""
    return d if d.get("num_classes") else {k: v for k, v in d.items() if k != "num_classes"}


class MLPEps(nn.Module):
    """h = W_x x + W_t emb(t); then `depth` SiLU+Linear layers; a linear read-out of eps.

    x and t get separate input projections that are summed, rather than one projection of their
    concatenation: the sum lets a compiled sampling step embed the shared t once per step.
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.in_x = nn.Linear(cfg.data_dim, cfg.width)
        self.in_t = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.hidden = nn.ModuleList(nn.Linear(cfg.width, cfg.width) for _ in range(cfg.depth))
        self.out = nn.Linear(cfg.width, cfg.data_dim)
        self.act = nn.SiLU()
        if cfg.num_classes:   # absent otherwise: unconditional weights stay as they were
            self.in_y = nn.Linear(cfg.num_classes + 1, cfg.width, bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """`y`: one-hot labels (B, num_classes + 1), the last column the null class; conditional nets only."""
        h = self.in_x(x) + self.in_t(timestep_embedding(t, self.cfg.emb_dim))
        if y is not None:
            h = h + self.in_y(y)
        for layer in self.hidden:
            h = layer(self.act(h))
        return self.out(self.act(h))
