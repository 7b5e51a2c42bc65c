"""Class conditioning for the torch side: one-hot labels, label dropout, classifier-free guidance.

Labels enter every network as float one-hot rows (not int64 indices): an embedding is then a bias-free
Linear, which exports to a plain ONNX MatMul that TVM's relax frontend imports and fuses like any other,
where nn.Embedding becomes a Gather (TVM's unchecked "fast" take). Diffusion networks get K + 1 columns,
the last being the null class that label dropout trains (Ho & Salimans 2022); GANs get K columns.

Classifier-free guidance with scale w (the convention of Ho & Salimans, eq. 6):

    eps = (1 + w) eps(x, t, y) - w eps(x, t, null) = eps_c + w (eps_c - eps_u)

w = 0 is the plain conditional model; larger w trades diversity for agreement with the label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LABEL_DROPOUT = 0.1   # share of training labels replaced by the null class; Ho & Salimans found 0.1-0.2 best


def one_hot(labels: torch.Tensor, width: int) -> torch.Tensor:
    """int64 labels (B,) -> float32 (B, width)."""
    return F.one_hot(labels, width).float()


def drop_labels(labels: torch.Tensor, num_classes: int, g: torch.Generator, p: float = LABEL_DROPOUT) -> torch.Tensor:
    """Replace each label by the null class num_classes with probability p (draws from `g`)."""
    drop = torch.rand(len(labels), generator=g) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def null_row(num_classes: int) -> torch.Tensor:
    """The one-hot row of the null class, (1, num_classes + 1)."""
    return one_hot(torch.tensor([num_classes]), num_classes + 1)


class GuidedEps(nn.Module):
    """Classifier-free guided eps(x, t, y, w): both branches in ONE network call on the batch doubled.

    `shared_t`: t has shape (1,) and is shared by the batch (the fused step), else t is (B,).
    The halves are split on a static leading axis of 2 by reshapes to the constant `sample_shape`: read
    from x.shape, the exporter would emit Shape/Gather, and squeeze(0) an If, which TVM's VM cannot run.
    """

    def __init__(self, net: nn.Module, num_classes: int, sample_shape: tuple[int, ...], shared_t: bool):
        super().__init__()
        self.net, self.shape, self.shared_t = net, tuple(int(d) for d in sample_shape), shared_t
        self.register_buffer("null", null_row(num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        t2 = t if self.shared_t else torch.cat([t, t])
        eps2 = self.net(torch.cat([x, x]), t2, torch.cat([y, self.null.expand_as(y)]))
        cond, uncond = eps2.reshape(2, -1, *self.shape).split(1)
        return (cond + w * (cond - uncond)).reshape(-1, *self.shape)   # w (1,) broadcasts over any sample rank
