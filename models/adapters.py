"""Adapt a user's network to gencc's eps_theta(x, t) convention, in torch ops that export to one ONNX graph.

The conversions (compiler/options.py names them) are ordinary tensor arithmetic on t, so tracing the
adapter puts them into eps.onnx and step.onnx beside the network: the compiled step still makes one
call per sampler step. gamma_t and sigma_t come from the artifact's own SDE (runtime/sde.py):

  time input   t: t            timestep:N: (N - 1) t          sigma: sigma_t / gamma_t, state x / gamma_t
  prediction   eps: eps        x0: eps = (x - gamma_t x0) / sigma_t       v: eps = sigma_t x + gamma_t v

(the v form holds because x = gamma_t x0 + sigma_t eps and gamma_t^2 + sigma_t^2 = 1).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gencc.runtime.conventions import TimeInput


class Schedule(nn.Module):
    """(gamma_t, sigma_t) of a VP SDE computed from t inside the graph.

    B(t) = int_0^t beta is the closed form of the continuous linear schedule, or for a discrete table of
    N steps the SDE's own piecewise-linear B through B_i at t_i = i / (N - 1), evaluated as a sum of hat
    functions: exportable without Gather, and exact linear interpolation between the two nearest knots.
    """

    def __init__(self, sde):
        super().__init__()
        n = getattr(sde, "num_train_timesteps", None)
        self.steps = int(n) - 1 if n else 0
        if self.steps:
            knots = np.arange(self.steps + 1, dtype=np.float64) / self.steps
            self.register_buffer("table", torch.tensor(np.asarray(sde.int_beta(knots)), dtype=torch.float32))
            self.register_buffer("grid", torch.arange(self.steps + 1, dtype=torch.float32))
        else:
            self.beta_min, self.beta_max = float(sde.beta_min), float(sde.beta_max)

    def int_beta(self, t: torch.Tensor) -> torch.Tensor:
        if not self.steps:
            return self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)
        hat = torch.relu(1.0 - (t.unsqueeze(-1) * self.steps - self.grid).abs())
        return (hat * self.table).sum(-1)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.int_beta(t)
        return torch.exp(-0.5 * b), torch.sqrt(_one_minus_exp_neg(b))


def _one_minus_exp_neg(b: torch.Tensor) -> torch.Tensor:
    """1 - exp(-b) = -expm1(-b), which ONNX lacks: float32 1 - exp(-1e-4) keeps only 3 digits, so small b
    takes the Taylor series (6 terms: relative error < 2e-8 below 0.1)."""
    series = b * (1 - b / 2 * (1 - b / 3 * (1 - b / 4 * (1 - b / 5 * (1 - b / 6)))))
    return torch.where(b < 0.1, series, 1.0 - torch.exp(-b))


class EpsAdapter(nn.Module):
    """eps_theta(x, t) from a network net(x_in, time_in[, label]) with another time input or prediction.

    The network's time input is always a (B,) tensor, whatever t's shape (the fused step passes t of
    shape (1,), shared by the batch). A network may return a tensor, a tuple (its first element is used)
    or a diffusers output (its .sample).
    """

    def __init__(self, net: nn.Module, sde, time_input: TimeInput, prediction: str):
        super().__init__()
        self.net, self.time_input, self.prediction = net, time_input, prediction
        self.schedule = Schedule(sde)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *label: torch.Tensor) -> torch.Tensor:
        out = self.network_output(x, t, *label)
        if self.prediction == "eps":
            return out
        gamma, sigma = (_per_sample(c, x) for c in self.schedule(t))
        if self.prediction == "x0":
            return (x - gamma * out) / sigma
        return sigma * x + gamma * out   # v

    def network_output(self, x: torch.Tensor, t: torch.Tensor, *label: torch.Tensor) -> torch.Tensor:
        """The network's own output (before the prediction is converted) at gencc's (x, t)."""
        t = t.expand(x.shape[0])
        if self.time_input.kind == "timestep":
            return output_tensor(self.net(x, (self.time_input.steps - 1) * t, *label))
        if self.time_input.kind == "sigma":
            gamma, sigma = self.schedule(t)
            return output_tensor(self.net(x / _per_sample(gamma, x), sigma / gamma, *label))
        return output_tensor(self.net(x, t, *label))


class LabelInput(nn.Module):
    """gencc's one-hot label rows y (B, K + 1), the last column the null class of classifier-free guidance
    (models/guidance.py), as the network takes them: those rows ("onehot") or int64 class ids
    ("index", K meaning null). ArgMax, not Gather, so the graph stays free of TVM's unchecked take."""

    def __init__(self, net: nn.Module, label_input: str):
        super().__init__()
        self.net, self.label_input = net, label_input

    def forward(self, x: torch.Tensor, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(x, time, y.argmax(-1) if self.label_input == "index" else y)


def output_tensor(out) -> torch.Tensor:
    """A network's result as one tensor: itself, a tuple's first element, or a diffusers output's .sample."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    from gencc.runtime.errors import GenccError
    raise GenccError(f"the network returned {type(out).__name__}; expected a tensor (or a tuple starting with one)")


def _per_sample(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) or (1,) coefficients broadcast against x (B, ...)."""
    return c.reshape((-1,) + (1,) * (x.dim() - 1))
