"""Noise-prediction network eps_theta(x, t) for images: a small UNet (DDPM-style, Ho et al. 2020).

ResBlocks with GroupNorm, SiLU and an added time embedding; one self-attention block at the lowest
resolution. Sized for 8x8 to 32x32 images on a CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .nets import conditional_dict, timestep_embedding


@dataclass(frozen=True)
class UNetConfig:
    channels: int = 1                     # image channels
    size: int = 8                         # image height = width
    width: int = 32                       # channels at full resolution; 32 trains digits in ~2 min on 2 cores
    mults: tuple[int, ...] = (1, 2)       # channel multiplier per resolution; len - 1 downsamplings
    groups: int = 8                       # GroupNorm groups; must divide every channel count
    emb_dim: int = 128
    num_classes: int = 0                  # > 0: class-conditional, plus a null class (models/guidance.py)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mults"] = list(self.mults)
        return conditional_dict({"arch": "unet", **d})


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, written with matmuls for a plain ONNX graph."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.scale = c ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        # Batched matmuls rather than einsum: TVM 0.27 cannot fuse a legalised einsum at a static batch
        # (FuseTIR fails), which tuning needs, and its default CPU schedule handles matmuls.
        attn = torch.softmax((q.transpose(1, 2) @ k) * self.scale, dim=-1)   # (b, i, j)
        out = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)                   # (b, c, i)
        return x + self.proj(out)


class UNetEps(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chans = [cfg.width * m for m in cfg.mults]
        self.time = nn.Sequential(nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim))
        self.stem = nn.Conv2d(cfg.channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(chans):
            self.down.append(ResBlock(chans[max(i - 1, 0)], c, cfg.emb_dim, cfg.groups))
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(chans[-1], chans[-1], cfg.emb_dim, cfg.groups)
        self.attn = Attention(chans[-1], cfg.groups)
        self.mid2 = ResBlock(chans[-1], chans[-1], cfg.emb_dim, cfg.groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chans))):
            c_in = chans[i] + chans[i]           # skip connection from the same resolution
            self.up.append(ResBlock(c_in, chans[i], cfg.emb_dim, cfg.groups))
            if i > 0:
                self.upsample.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 4, stride=2, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(cfg.groups, chans[0]), nn.SiLU(),
                                  nn.Conv2d(chans[0], cfg.channels, 3, padding=1))
        if cfg.num_classes:   # a label embedding added to the time features, then mixed by the time MLP
            self.label = nn.Linear(cfg.num_classes + 1, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """`y`: one-hot labels (B, num_classes + 1), the last column the null class; conditional nets only."""
        emb = timestep_embedding(t, self.cfg.emb_dim)
        # Added before the time MLP rather than after it (as guided diffusion does): after it, the MLP's
        # last matmul on the shared t (1 row) gets a broadcast epilogue over the batch, which gencc's
        # CPU Contraction schedule fails on (TVM "Cannot dispatch a null expression").
        emb = self.time(emb if y is None else emb + self.label(y))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.head(h)
