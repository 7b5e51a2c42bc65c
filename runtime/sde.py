"""The variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW (Song et al. 2021), closed forms.

One class serves numpy (the runtime) and torch (training): every method uses only arithmetic and `exp`/
`log`/`sqrt`, dispatched on the argument's type, so the two versions cannot drift apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import GenccError
from .jsonfile import one_line, short


def _fn(name: str, x: Any) -> Any:
    """Apply a unary math function to a float, numpy array or torch tensor, keeping its type."""
    if isinstance(x, (float, int)):
        return getattr(math, name)(x)
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return getattr(np, name)(x)
    return getattr(x, name)()  # torch.Tensor: .exp(), .log(), .sqrt(), .expm1()


@dataclass(frozen=True)
class VPSDE:
    """Linear schedule beta(t) = beta_min + t (beta_max - beta_min) on t in [0, T=1]."""

    beta_min: float = 0.1   # DDPM's beta_1 = 1e-4 times N = 1000 steps
    beta_max: float = 20.0  # DDPM's beta_N = 0.02 times N = 1000 steps
    t_eps: float = 1e-3     # smallest t trained and sampled: sigma_t -> 0 makes eps/sigma_t blow up

    def __post_init__(self) -> None:
        if not (0 < self.beta_min < self.beta_max):
            raise GenccError(f"need 0 < beta_min < beta_max, got beta_min={self.beta_min}, beta_max={self.beta_max}")
        if not (0 < self.t_eps < 1):
            raise GenccError(f"need 0 < t_eps < 1, got t_eps={self.t_eps}")

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t):
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)

    def gamma(self, t):
        """Mean coefficient of q(x_t | x_0): gamma_t = exp(-1/2 B(t))."""
        return _fn("exp", -0.5 * self.int_beta(t))

    def sigma(self, t):
        """Std of q(x_t | x_0): sigma_t = sqrt(1 - exp(-B(t))), via expm1 to stay exact at small t."""
        return _fn("sqrt", -_fn("expm1", -self.int_beta(t)))

    def marginal(self, x0, t, eps):
        """A draw from q(x_t | x_0) = N(gamma_t x_0, sigma_t^2 I), with the noise `eps` given."""
        return _bcast(self.gamma(t), x0) * x0 + _bcast(self.sigma(t), x0) * eps

    def score_from_eps(self, eps, t):
        """grad log p_t(x) = -eps / sigma_t: the factor the lecture slide's generation process drops."""
        return -eps / _bcast(self.sigma(t), eps)

    def sde(self, x, t):
        """Forward drift and diffusion: f(x, t) = -1/2 beta x, g(t) = sqrt(beta)."""
        b = self.beta(t)
        return -0.5 * _bcast(b, x) * x, _fn("sqrt", b)

    def lambda_(self, t):
        """Half log-SNR, log(gamma_t / sigma_t): the time variable of DDIM / DPM-Solver."""
        return _fn("log", self.gamma(t)) - _fn("log", self.sigma(t))

    def to_dict(self) -> dict:
        return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_eps": self.t_eps}

    @classmethod
    def from_dict(cls, d: dict) -> "VPSDE":
        if not isinstance(d, dict) or d.get("kind", "vp") != "vp":
            raise GenccError(f"unknown SDE {short(d)}; only kind 'vp' is supported")
        try:
            values = [float(d[k]) for k in ("beta_min", "beta_max", "t_eps")]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise GenccError(f"malformed SDE record {short(d)}: {one_line(e)}") from None
        if not all(math.isfinite(v) for v in values):
            raise GenccError(f"SDE parameters must be finite, got {short(d)}")
        return cls(*values)


def _bcast(coef, x):
    """Reshape a per-sample coefficient of shape (B,) to broadcast against x of shape (B, ...)."""
    if isinstance(coef, (float, int)) or getattr(coef, "ndim", 0) == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))
