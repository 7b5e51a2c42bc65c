"""ONNX functions of class-conditional checkpoints: the guided fused step, guided eps, labelled generator.

The contract (runtime/artifact.py, "affine5-cfg-v1") extends the unconditional one by two inputs:

  eps.onnx        x, t (B,), y (B, K+1), w (1,)                                -> eps
  step.onnx       x, t (1,), coef (5,), z, x_prev, e_prev, y (B, K+1), w (1,)  -> x_next, eps
  generator.onnx  z (B, latent), y (B, K)                                      -> x

where eps is the classifier-free guided (1 + w) eps(x, t, y) - w eps(x, t, null) and y holds one-hot
rows (models/guidance.py). Guidance runs inside the compiled function: the batch is doubled,
cond and null halves go through one network call, and the halves are combined before the update.
"""
from __future__ import annotations

import torch
from torch import nn

from gencc.models.guidance import GuidedEps

from .export import FusedStep, _spec, eps_io, generator_io, step_io


class GuidedFusedStep(nn.Module):
    """FusedStep over the guided eps: x_next = c0 x + c1 eps_w + c2 z + c3 x_prev + c4 e_prev, and eps_w."""

    def __init__(self, net: nn.Module, num_classes: int, sample_shape: tuple[int, ...]):
        super().__init__()
        self.guided = GuidedEps(net, num_classes, sample_shape, shared_t=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, z: torch.Tensor, x_prev: torch.Tensor,
                e_prev: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.guided(x, t, y, w)
        return FusedStep.update(coef, x, eps, z, x_prev, e_prev), eps


def _label_inputs(num_classes: int, with_null: bool) -> list[dict]:
    y = _spec("y", (num_classes + (1 if with_null else 0),))
    return [y, _spec("w", (1,), batched=False)] if with_null else [y]


def guided_eps_io(shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    inputs, outputs = eps_io(shape)
    return inputs + _label_inputs(num_classes, with_null=True), outputs


def guided_step_io(shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    inputs, outputs = step_io(shape)
    return inputs + _label_inputs(num_classes, with_null=True), outputs


def labelled_generator_io(latent_dim: int, shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    inputs, outputs = generator_io(latent_dim, shape)
    return inputs + _label_inputs(num_classes, with_null=False), outputs


def conditional_functions(model: str, net: nn.Module, shape: tuple[int, ...]) -> dict:
    """{name: (module, (inputs, outputs))} for a conditional checkpoint's network `net`."""
    k = net.cfg.num_classes
    if model == "gan":
        return {"generator": (net, labelled_generator_io(net.cfg.latent_dim, shape, k))}
    return {"eps": (GuidedEps(net, k, shape, shared_t=False), guided_eps_io(shape, k)),
            "step": (GuidedFusedStep(net, k, shape), guided_step_io(shape, k))}
