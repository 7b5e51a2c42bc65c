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

    def sde(self, t):
        """The forward SDE dx = f(t) x dt + g(t) dW as its two scalars (f(t), g(t)^2) = (-1/2 beta, beta).

        The drift is linear in x, so the scalars are all a sampler needs; g^2, not g, because every
        discretisation below uses g^2 (sqrt(beta) squared would not round back to beta).
        """
        b = self.beta(t)
        return -0.5 * b, b

    def score_from_eps(self, eps, t):
        """grad log p_t(x) = -eps / sigma_t: the factor the lecture slide's generation process drops."""
        return -eps / _bcast(self.sigma(t), eps)

    # The reverse-time maths, written once for every sampler. A drift method gives the increment of an
    # Euler step from t back to t - dt (dt > 0), -dt times the drift, as its coefficients (c_x, c_eps) of
    # x and eps: the score is -eps / sigma_t, so the increment is linear in both and fits the fused step.
    # Only beta, gamma and sigma are read, so a subclass with another schedule inherits all of them.
    # The groupings are those the samplers always used: -dt * f equals 0.5 * dt * beta and
    # score_from_eps(dt * g2) equals -dt * beta / sigma bit for bit (halving and negation are exact), which
    # keeps every sample bit-identical and matches examples/cpp/sde.h.

    def reverse_drift(self, t, dt):
        """Reverse SDE dx = [f x - g^2 score] dt + g dW-bar: c_x x + c_eps eps = -dt [f x - g^2 score(x)]."""
        f, g2 = self.sde(t)
        return -dt * f, self.score_from_eps(dt * g2, t)

    def reverse_diffusion(self, t, dt):
        """Std of the reverse SDE's noise over a step dt: g sqrt(dt), as sqrt(g^2 dt)."""
        _, g2 = self.sde(t)
        return _fn("sqrt", g2 * dt)

    def pf_ode_drift(self, t, dt):
        """Probability-flow ODE dx/dt = f x - 1/2 g^2 score: c_x x + c_eps eps = -dt [f x - 1/2 g^2 score(x)]."""
        f, g2 = self.sde(t)
        return -dt * f, self.score_from_eps(0.5 * dt * g2, t)

    def x0_from_eps(self, x, eps, t):
        """Tweedie's denoised estimate E[x_0 | x_t = x] = (x - sigma_t eps) / gamma_t."""
        return (x - _bcast(self.sigma(t), x) * eps) / _bcast(self.gamma(t), x)

    def x0_coefs(self, t):
        """The same estimate as the coefficients (of x, of eps) of the fused step: (1 / gamma_t, -sigma_t / gamma_t)."""
        g, s = self.gamma(t), self.sigma(t)
        return 1.0 / g, -s / g

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
