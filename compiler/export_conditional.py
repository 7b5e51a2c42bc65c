"""ONNX functions of class-conditional checkpoints: the guided fused step, guided eps, labelled generator.

Their contract is "affine5-cfg-v1" (docs/ARTIFACT.md §4; inputs and outputs: runtime/artifact.py's
`signature`): step and eps take labels y (B, K+1, the last column the null class) and the guidance scale
w (1,), and the generator y (B, K), after the unconditional inputs. Guidance runs inside the compiled
function: the batch is doubled, cond and null halves go through one network call, and the halves are
combined into the classifier-free guided eps before the update (models/guidance.py).
"""
from __future__ import annotations

import torch
from torch import nn

from gencc.models.guidance import GuidedEps
from gencc.runtime.artifact import Dims

from .export import FusedStep, _ints, io_json


class GuidedFusedStep(nn.Module):
    """FusedStep over the guided eps (the "affine5-cfg-v1" contract, docs/ARTIFACT.md §4)."""

    def __init__(self, net: nn.Module, num_classes: int, sample_shape: tuple[int, ...]):
        super().__init__()
        self.guided = GuidedEps(net, num_classes, sample_shape, shared_t=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, z: torch.Tensor, x_prev: torch.Tensor,
                e_prev: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.guided(x, t, y, w)
        return FusedStep.update(coef, x, eps, z, x_prev, e_prev), eps


def guided_eps_io(shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    return io_json("eps", Dims(state=_ints(shape), num_classes=int(num_classes)))


def guided_step_io(shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    return io_json("step", Dims(state=_ints(shape), num_classes=int(num_classes)))


def labelled_generator_io(latent_dim: int, shape: tuple[int, ...], num_classes: int) -> tuple[list[dict], list[dict]]:
    return io_json("generator", Dims(sample_shape=_ints(shape), latent_shape=(int(latent_dim),),
                                     num_classes=int(num_classes)))


def conditional_functions(model: str, net: nn.Module, shape: tuple[int, ...]) -> dict:
    """{name: (module, (inputs, outputs))} for a conditional checkpoint's network `net`."""
    k = net.cfg.num_classes
    if model == "gan":
        return {"generator": (net, labelled_generator_io(net.cfg.latent_dim, shape, k))}
    return {"eps": (GuidedEps(net, k, shape, shared_t=False), guided_eps_io(shape, k)),
            "step": (GuidedFusedStep(net, k, shape), guided_step_io(shape, k))}
