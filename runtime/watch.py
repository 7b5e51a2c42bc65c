"""Watching the reverse process: each step's state and Tweedie's denoised estimate, at no extra network call.

After step k, `x0_hat = (x_in - sigma_t eps) / gamma_t` (Tweedie's formula for the VP-SDE), where
(x_in, t, eps) are the input, time and network output of the step's last network evaluation: the
fused step returns that eps anyway, so watching costs copies off the device, and only when asked.
For most samplers that evaluation is at the step's start t_k; for ode-heun it is the corrector's, at
t_{k+1}; for pc the predictor's, after the corrector moves.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .normalize import Normalization
from .sde import VPSDE


@dataclass
class StepView:
    """One step of one chunk of `Model.sample`, as its `on_step` callback sees it. Nothing is copied
    off the device until `state()` or `denoised()` is called."""

    k: int                      # index of the step just taken (0-based); 0 for a GAN's single pass
    start: int                  # index of the chunk's first sample
    t: float | None             # time of the step's last network evaluation; None for a GAN
    x: Any                      # the state after the step, in the backend's array type, model space
    x_in: Any = None            # the input of that network evaluation
    eps: Any = None             # its output, eps_theta(x_in, t)
    sde: VPSDE | None = None
    normalization: Normalization | None = None
    to_numpy: Callable = np.asarray

    def state(self) -> np.ndarray:
        """The sampler state after the step, in model (normalised) space."""
        return np.asarray(self.to_numpy(self.x), dtype=np.float32)

    def denoised(self) -> np.ndarray:
        """x0_hat = (x_in - sigma_t eps) / gamma_t in the data's own units; a GAN's output as it is."""
        if self.t is None:
            x0 = self.state()
        else:
            assert self.sde is not None, "a diffusion step's view carries its SDE"
            x_in = np.asarray(self.to_numpy(self.x_in), dtype=np.float64)
            eps = np.asarray(self.to_numpy(self.eps), dtype=np.float64)
            x0 = self.sde.x0_from_eps(x_in, eps, self.t)
        assert self.normalization is not None, "Model.sample passes its normalization to every view"
        return self.normalization.decode(x0.astype(np.float32))


class LastEval:
    """Wraps a fused-step callable and remembers its latest (x_in, t, eps), for `StepView`."""

    def __init__(self, step_fn: Callable):
        self.step_fn = step_fn
        self.x_in: Any = None
        self.t: Any = None   # a float once the step has run
        self.eps: Any = None

    def __call__(self, x, t, coef, z=None, x_prev=None, e_prev=None):
        x_next, eps = self.step_fn(x, t, coef, z, x_prev, e_prev)
        self.x_in, self.t, self.eps = x, t, eps
        return x_next, eps
