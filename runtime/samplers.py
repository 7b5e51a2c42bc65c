"""Reverse-time samplers for the VP-SDE: pure functions over an eps_fn(x, t) callable.

Every sampler takes the starting state `x` (a draw from the prior N(0, I)), a decreasing time grid `ts`
from 1 down to t_eps, the SDE, and an explicit noise source `noise(k)` for step k. They never know what
the network is: torch, ONNX Runtime, a compiled TVM step and an exact analytic eps all plug in.

First-order updates are written as x <- a x + b eps_theta(x, t) + c z and go through `step_fn`, so a
backend can fuse the network and the update into one compiled call and keep `x` on its device.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .errors import GenccError
from .sde import VPSDE

EpsFn = Callable[[Any, float], Any]                                  # eps_theta(x, t), t shared by the batch
StepFn = Callable[[Any, float, float, float, float, Any], Any]       # (x, t, a, b, c, z) -> a x + b eps + c z
NoiseFn = Callable[[int], Any]                                       # k -> z for step k, shaped like x
Callback = Callable[[int, Any], None]                                # (step index, state)


def affine_step(eps_fn: EpsFn) -> StepFn:
    """The unfused step: one network call, then the update on the host."""
    def step(x, t, a, b, c, z):
        out = a * x + b * eps_fn(x, t)
        return out + c * z if c != 0.0 else out
    return step


def time_grid(sde: VPSDE, steps: int, spacing: str = "uniform") -> np.ndarray:
    """steps + 1 decreasing times from 1 to t_eps, uniform in t or in log-SNR lambda_t."""
    if steps <= 0:
        raise GenccError(f"steps must be a positive integer, got {steps}")
    if spacing == "uniform":
        return np.linspace(1.0, sde.t_eps, steps + 1)
    if spacing == "logsnr":
        lam = np.linspace(sde.lambda_(1.0), sde.lambda_(sde.t_eps), steps + 1)
        # Invert lambda = -1/2 log(e^B - 1): B = log(1 + e^{-2 lambda}), then solve the quadratic B(t).
        big_b = np.log1p(np.exp(-2.0 * lam))
        k = 0.5 * (sde.beta_max - sde.beta_min)
        ts = (-sde.beta_min + np.sqrt(sde.beta_min ** 2 + 4 * k * big_b)) / (2 * k)
        ts[0], ts[-1] = 1.0, sde.t_eps
        return ts
    raise GenccError(f"unknown time spacing {spacing!r}; expected 'uniform' or 'logsnr'")


def denoise(step: StepFn, x, t: float, sde: VPSDE):
    """Tweedie's denoised estimate x0 = (x - sigma_t eps) / gamma_t; adds no noise."""
    g, s = sde.gamma(t), sde.sigma(t)
    return step(x, t, 1.0 / g, -s / g, 0.0, None)


def sample_em(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn,
              callback: Callback | None = None, step_fn: StepFn | None = None):
    """Euler-Maruyama on the reverse SDE dx = -[1/2 beta x + beta score] dt + sqrt(beta) dW, score = -eps/sigma.

    NFE = steps + 1 (the last evaluation is the noise-free denoising step).
    """
    step = step_fn or affine_step(eps_fn)
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k] - ts[k + 1])   # h > 0: we integrate backwards in time
        beta, sigma = sde.beta(t), sde.sigma(t)
        # x <- x + h [1/2 beta x - beta eps / sigma] + sqrt(beta h) z
        x = step(x, t, 1.0 + 0.5 * h * beta, -h * beta / sigma, math.sqrt(beta * h), noise(k))
        _report(callback, k, x)
    return denoise(step, x, float(ts[-1]), sde)


def sample_ode_euler(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                     callback: Callback | None = None, step_fn: StepFn | None = None):
    """Euler on the probability-flow ODE dx/dt = -1/2 beta(t) [x - eps/sigma_t]. NFE = steps + 1."""
    step = step_fn or affine_step(eps_fn)
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k] - ts[k + 1])
        beta, sigma = sde.beta(t), sde.sigma(t)
        x = step(x, t, 1.0 + 0.5 * h * beta, -0.5 * h * beta / sigma, 0.0, None)
        _report(callback, k, x)
    return denoise(step, x, float(ts[-1]), sde)


def sample_ode_heun(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                    callback: Callback | None = None, step_fn: StepFn | None = None):
    """Heun's second-order method (trapezoidal rule) on the probability-flow ODE. NFE = 2 steps + 1."""
    def drift(x, t):
        return -0.5 * sde.beta(t) * (x - eps_fn(x, t) / sde.sigma(t))

    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        dt = t_next - t
        d1 = drift(x, t)
        x_euler = x + dt * d1                                # Euler predictor.
        x = x + 0.5 * dt * (d1 + drift(x_euler, t_next))     # Trapezoidal corrector.
        _report(callback, k, x)
    return denoise(affine_step(eps_fn), x, float(ts[-1]), sde)


def sample_ddim(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                callback: Callback | None = None, step_fn: StepFn | None = None):
    """Deterministic DDIM (Song, Meng & Ermon 2021) on the continuous VP schedule. NFE = steps + 1.

    x0 = (x - sigma_t eps) / gamma_t, then x_next = gamma_next x0 + sigma_next eps.
    """
    step = step_fn or affine_step(eps_fn)
    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        g, s, gn, sn = sde.gamma(t), sde.sigma(t), sde.gamma(t_next), sde.sigma(t_next)
        x = step(x, t, gn / g, sn - gn * s / g, 0.0, None)
        _report(callback, k, x)
    return denoise(step, x, float(ts[-1]), sde)


SAMPLERS: dict[str, Callable] = {
    "em": sample_em,
    "ode-euler": sample_ode_euler,
    "ode-heun": sample_ode_heun,
    "ddim": sample_ddim,
}

STOCHASTIC = frozenset({"em"})
FUSED = frozenset({"em", "ode-euler", "ddim"})   # every update goes through step_fn: state can stay on a device


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations one run of `sampler` with `steps` steps costs."""
    get_sampler(sampler)
    return 2 * steps + 1 if sampler == "ode-heun" else steps + 1


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise GenccError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


def _report(callback: Callback | None, k: int, x) -> None:
    if callback is not None:
        callback(k, x)
