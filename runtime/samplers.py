"""Reverse-time samplers for the VP-SDE: pure functions over a network callable.

Every sampler takes the starting state `x` (a draw from the prior N(0, I)), a decreasing time grid `ts`
from 1 down to t_eps, the SDE, and an explicit noise source `noise(j)` for the j-th noise draw. They
never know what the network is: torch, ONNX Runtime, a compiled TVM step and an exact analytic eps all
plug in.

Every update is written in one linear form, the fused-step contract of compiled artifacts
(docs/ARTIFACT.md §4): x_next is a linear combination of x, eps_theta(x, t), the noise z and an earlier
x_prev and e_prev, with the coefficients of `Coef`, returning (x_next, eps). So a backend can run the
network and the update in one compiled call and keep the state on its device. Second-order and
multistep methods pass an earlier state and eps back in as x_prev, e_prev.
Each sampler's NFE (network evaluations) is in its docstring; all end with one noise-free denoising
evaluation, Tweedie's x0 = (x - sigma_t eps) / gamma_t at t_eps.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .defaults import PC_CORRECTOR_STEPS, PC_SNR
from .errors import GenccError
from .sde import VPSDE

EpsFn = Callable[[Any, float], Any]            # eps_theta(x, t), t shared by the batch
StepFn = Callable[..., tuple[Any, Any]]        # (x, t, coef, z=None, x_prev=None, e_prev=None) -> (x_next, eps)
NoiseFn = Callable[[int], Any]                 # j -> the j-th N(0, I) draw, shaped like x
Callback = Callable[[int, Any], None]          # (step index, state)
# (x, ts (L,), coefs (L, 3), zs: the chain_noise of L draws) -> x after L steps
ChainFn = Callable[..., Any]


class Coef(NamedTuple):
    """The fused step's coefficients, each named for the input it multiplies:
    x_next = x * state + eps * eps_theta(state, t) + z * noise + x_prev * x_prev + e_prev * e_prev."""

    x: float
    eps: float
    z: float = 0.0
    x_prev: float = 0.0
    e_prev: float = 0.0


class PlanStep(NamedTuple):
    """One fused-step call of a plan."""

    t: float
    coef: Coef
    draw: int | None     # index of the noise draw z, None: the step draws none (its coef.z is 0)
    report: int | None   # step index passed to the callback after it, None: not reported


def affine_step(eps_fn: EpsFn) -> StepFn:
    """The unfused step: one network call, then the update on the host (terms with c = 0 skipped).

    `coef` is a Coef or any sequence of its 5 values: indexed, not named, so both work.
    """
    def step(x, t, coef, z=None, x_prev=None, e_prev=None):
        eps = eps_fn(x, t)
        out = coef[0] * x + coef[1] * eps
        for c, v in zip(coef[2:], (z, x_prev, e_prev), strict=False):   # a shorter coef: no such terms
            if c != 0.0:
                out = out + c * v
        return out, eps
    return step


def time_grid(sde: VPSDE, steps: int, spacing: str = "uniform") -> np.ndarray:
    """steps + 1 decreasing times from 1 to t_eps, uniform in t or in log-SNR lambda_t."""
    if not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise GenccError(f"steps must be a positive integer, got {steps!r}")
    if spacing == "uniform":
        return np.linspace(1.0, sde.t_eps, steps + 1)
    if spacing == "logsnr":
        lam = np.linspace(sde.lambda_(1.0), sde.lambda_(sde.t_eps), steps + 1)
        ts = sde.t_from_lambda(lam)
        ts[0], ts[-1] = 1.0, sde.t_eps
        return ts
    raise GenccError(f"unknown time spacing {spacing!r}; expected 'uniform' or 'logsnr'")


def _step_of(eps_fn: EpsFn, step_fn: StepFn | None) -> StepFn:
    return step_fn or affine_step(eps_fn)


def _denoise(step: StepFn, x, t: float, sde: VPSDE):
    """Tweedie's denoised estimate x0 = (x - sigma_t eps) / gamma_t; adds no noise."""
    return step(x, t, Coef(*sde.x0_coefs(t)))[0]


def _denoise_step(ts, sde: VPSDE) -> PlanStep:
    """The plan's last entry: Tweedie's x0 at t_eps, no noise, not reported."""
    t = float(ts[-1])
    return PlanStep(t, Coef(*sde.x0_coefs(t)), None, None)


def run_plan(step: StepFn, x, plan: list[PlanStep], noise: NoiseFn | None, callback: Callback | None = None):
    """Carry out a plan one step call at a time."""
    for p in plan:
        z = None
        if p.draw is not None:
            assert noise is not None, "a plan that draws noise needs a noise source"
            z = noise(p.draw)
        x, _ = step(x, p.t, p.coef, z)
        if p.report is not None:
            _report(callback, p.report, x)
    return x


def run_plan_chained(chain: ChainFn, length: int, step: StepFn, x, plan: list[PlanStep],
                     noise: NoiseFn | None, chain_noise: Callable, check: Callback | None = None):
    """Carry out a plan `length` steps per call of `chain`, the rest (fewer than `length`) one by one.

    `chain(x, ts (L,), coefs (L, 3), zs)` applies L steps x <- c0 x + c1 eps(x, t) + c2 z in one
    compiled call, so the host's per-call overhead is paid once per L steps. `zs = chain_noise(draws)`
    is the chain's noise input for the L draw indices (None where a step draws none; see `host_draws`),
    `noise(j)` is draw j for `step`; `check(k, x)` runs after each chained call.
    """
    i = 0
    while len(plan) - i >= length:
        block = plan[i:i + length]
        x = chain(x, np.array([p.t for p in block], np.float32),
                  np.array([(p.coef.x, p.coef.eps, p.coef.z) for p in block], np.float32),
                  chain_noise([p.draw for p in block]))
        i += length
        reported = [p.report for p in block if p.report is not None]
        if check is not None and reported:
            check(reported[-1], x)
    return run_plan(step, x, plan[i:], noise, None)


def host_draws(noise: NoiseFn) -> Callable:
    """The simplest `chain_noise`: the list of draws themselves, None where a step draws none."""
    return lambda draws: [None if j is None else noise(j) for j in draws]


def _em_coef(sde: VPSDE, t: float, h: float) -> Coef:
    """Reverse-SDE Euler-Maruyama: x + h [1/2 beta x - beta eps / sigma] + sqrt(beta h) z."""
    c_x, c_eps = sde.reverse_drift(t, h)
    return Coef(1.0 + c_x, c_eps, sde.reverse_diffusion(t, h))


def em_plan(ts, sde: VPSDE) -> list[PlanStep]:
    plan = []
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k] - ts[k + 1])   # h > 0: we integrate backwards in time
        plan.append(PlanStep(t, _em_coef(sde, t, h), k, k))
    return plan + [_denoise_step(ts, sde)]


def sample_em(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn, callback: Callback | None = None,
              step_fn: StepFn | None = None):
    """Euler-Maruyama on the reverse SDE dx = -[1/2 beta x + beta score] dt + sqrt(beta) dW, score = -eps/sigma.

    NFE = steps + 1.
    """
    return run_plan(_step_of(eps_fn, step_fn), x, em_plan(ts, sde), noise, callback)


def pc_plan(ts, sde: VPSDE, corrector_steps: int = PC_CORRECTOR_STEPS, snr: float = PC_SNR) -> list[PlanStep]:
    if corrector_steps < 0 or snr <= 0:
        raise GenccError(f"pc needs corrector_steps >= 0 and snr > 0, got {corrector_steps} and {snr}")
    plan, draws = [], 1 + corrector_steps
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k] - ts[k + 1])
        sigma = sde.sigma(t)
        alpha = math.exp(-(sde.int_beta(t) - sde.int_beta(float(ts[k + 1]))))
        e = 2.0 * alpha * (snr * sigma) ** 2
        for i in range(corrector_steps):   # Corrector: Langevin MCMC at the current noise level, x + e score + ...
            plan.append(PlanStep(t, Coef(1.0, sde.score_from_eps(e, t), math.sqrt(2.0 * e)), k * draws + i, None))
        plan.append(PlanStep(t, _em_coef(sde, t, h), k * draws + corrector_steps, k))   # Predictor.
    return plan + [_denoise_step(ts, sde)]


def sample_pc(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn, callback: Callback | None = None,
              step_fn: StepFn | None = None, **options):
    """Predictor-corrector (Song et al. 2021): Langevin corrector steps at t, then an EM predictor step.

    Langevin: x <- x + e score + sqrt(2 e) z with e = 2 alpha (snr ||z|| / ||score||)^2, where alpha is
    DDPM's 1 - beta_i written exactly for the step: exp(-int_{t_next}^t beta), positive on any grid.
    The norm ratio is taken at its expectation sigma_t (E||eps||^2 = E||z||^2 = D), not measured per
    batch as score_sde does: this keeps each sample independent of the batch and the corrector fusable.
    NFE = steps (1 + corrector_steps) + 1. `options`: pc_plan's corrector_steps and snr.
    """
    return run_plan(_step_of(eps_fn, step_fn), x, pc_plan(ts, sde, **options), noise, callback)


def ancestral_plan(ts, sde: VPSDE) -> list[PlanStep]:
    plan = []
    for k in range(len(ts) - 1):
        t, s = float(ts[k]), float(ts[k + 1])
        g_t, sg_t, g_s, sg_s = sde.gamma(t), sde.sigma(t), sde.gamma(s), sde.sigma(s)
        g_ts = g_t / g_s
        var_ts = -math.expm1(-(sde.int_beta(t) - sde.int_beta(s)))   # 1 - gamma_ts^2, exact at small gaps
        c_x0 = g_s * var_ts / sg_t ** 2                              # weight of x0_hat = (x - sigma_t eps) / gamma_t
        # Not through sde.x0_coefs: c_x0 / g_t rounds differently from c_x0 * (1 / g_t), and samples stay bit-identical.
        coef = Coef(c_x0 / g_t + g_ts * sg_s ** 2 / sg_t ** 2, -c_x0 * sg_t / g_t, sg_s * math.sqrt(var_ts) / sg_t)
        plan.append(PlanStep(t, coef, k, k))
    return plan + [_denoise_step(ts, sde)]


def sample_ancestral(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn, callback: Callback | None = None,
                     step_fn: StepFn | None = None):
    """DDPM ancestral sampling (Ho et al. 2020) on the continuous VP schedule: draw x_s ~ q(x_s | x_t, x0_hat).

    With gamma_ts = gamma_t / gamma_s and sigma_ts^2 = 1 - gamma_ts^2, the posterior has mean
    (gamma_s sigma_ts^2 / sigma_t^2) x0_hat + (gamma_ts sigma_s^2 / sigma_t^2) x_t and std sigma_s sigma_ts / sigma_t.
    NFE = steps + 1.
    """
    return run_plan(_step_of(eps_fn, step_fn), x, ancestral_plan(ts, sde), noise, callback)


def ode_euler_plan(ts, sde: VPSDE) -> list[PlanStep]:
    plan = []
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k] - ts[k + 1])
        c_x, c_eps = sde.pf_ode_drift(t, h)
        plan.append(PlanStep(t, Coef(1.0 + c_x, c_eps), None, k))
    return plan + [_denoise_step(ts, sde)]


def sample_ode_euler(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                     callback: Callback | None = None, step_fn: StepFn | None = None):
    """Euler on the probability-flow ODE dx/dt = -1/2 beta(t) [x - eps/sigma_t]. NFE = steps + 1."""
    return run_plan(_step_of(eps_fn, step_fn), x, ode_euler_plan(ts, sde), noise, callback)


def sample_ode_heun(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                    callback: Callback | None = None, step_fn: StepFn | None = None):
    """Heun's method (trapezoidal rule) on the probability-flow ODE. NFE = 2 steps + 1.

    With d(x, e, t) = -1/2 beta_t (x - e / sigma_t) and dt = -h: the Euler predictor
    x' = x + dt d(x, e1, t), then x_next = x + dt/2 [d(x, e1, t) + d(x', e2, t_next)], which is linear in
    (x', e2, x, e1): the second call passes the original x and e1 back in as x_prev, e_prev.
    """
    step = _step_of(eps_fn, step_fn)
    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        h = t - t_next
        c_x, c_eps = sde.pf_ode_drift(t, h)
        x_pred, e1 = step(x, t, Coef(1.0 + c_x, c_eps))                                     # Euler predictor.
        # Trapezoidal corrector: half a step's drift at each end; halving h is exact, so these are the
        # 0.25 h beta and -0.25 h beta / sigma this step always used, bit for bit.
        (a, b), (an, bn) = sde.pf_ode_drift(t, 0.5 * h), sde.pf_ode_drift(t_next, 0.5 * h)
        x, _ = step(x_pred, t_next, Coef(an, bn, 0.0, 1.0 + a, b), None, x, e1)
        _report(callback, k, x)
    return _denoise(step, x, float(ts[-1]), sde)


def ddim_plan(ts, sde: VPSDE) -> list[PlanStep]:
    plan = []
    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        g, s, gn, sn = sde.gamma(t), sde.sigma(t), sde.gamma(t_next), sde.sigma(t_next)
        plan.append(PlanStep(t, Coef(gn / g, sn - gn * s / g), None, k))   # gn x0_hat + sn eps, grouped as ever
    return plan + [_denoise_step(ts, sde)]


def sample_ddim(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                callback: Callback | None = None, step_fn: StepFn | None = None):
    """Deterministic DDIM (Song, Meng & Ermon 2021) on the continuous VP schedule. NFE = steps + 1.

    x0 = (x - sigma_t eps) / gamma_t, then x_next = gamma_next x0 + sigma_next eps.
    """
    return run_plan(_step_of(eps_fn, step_fn), x, ddim_plan(ts, sde), noise, callback)


def sample_dpm2m(eps_fn: EpsFn, x, ts, sde: VPSDE, noise: NoiseFn | None = None,
                 callback: Callback | None = None, step_fn: StepFn | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022), data-prediction form on lambda_t = log(gamma_t / sigma_t).

    x_{k+1} = (sigma_{k+1} / sigma_k) x_k + gamma_{k+1} (1 - e^{-h}) D with h = lambda_{k+1} - lambda_k and
    D = (1 + 1/(2r)) x0_k - 1/(2r) x0_{k-1}, r = h_{k-1} / h; the first step is first order (D = x0_k).
    x0_j = (x_j - sigma_j e_j) / gamma_j is linear in (x_j, e_j), so the previous state and eps go back in
    as x_prev, e_prev. Use a log-SNR-uniform grid. NFE = steps + 1.
    """
    step = _step_of(eps_fn, step_fn)
    x_prev = e_prev = None
    for k in range(len(ts) - 1):
        t, t_next = float(ts[k]), float(ts[k + 1])
        g, s, gn, sn = sde.gamma(t), sde.sigma(t), sde.gamma(t_next), sde.sigma(t_next)
        h = sde.lambda_(t_next) - sde.lambda_(t)
        a = gn * -math.expm1(-h)                 # gamma_{k+1} (1 - e^{-h})
        w, w_prev = 1.0, 0.0
        if k > 0:
            t_prev = float(ts[k - 1])
            r = (sde.lambda_(t) - sde.lambda_(t_prev)) / h
            w, w_prev = 1.0 + 0.5 / r, 0.5 / r
            gp, sp = sde.gamma(t_prev), sde.sigma(t_prev)
        coef = Coef(sn / s + a * w / g, -a * w * s / g, 0.0,
                    -a * w_prev / gp if k > 0 else 0.0, a * w_prev * sp / gp if k > 0 else 0.0)
        x_new, eps = step(x, t, coef, None, x_prev, e_prev)
        x_prev, e_prev, x = x, eps, x_new
        _report(callback, k, x)
    return _denoise(step, x, float(ts[-1]), sde)


SAMPLERS: dict[str, Callable] = {
    "em": sample_em,
    "pc": sample_pc,
    "ancestral": sample_ancestral,
    "ode-euler": sample_ode_euler,
    "ode-heun": sample_ode_heun,
    "ddim": sample_ddim,
    "dpm2m": sample_dpm2m,
}

# Samplers whose every step is x <- c0 x + c1 eps + c2 z (no x_prev, e_prev): a plan of steps known up
# front, which a backend can run several steps per compiled call (run_plan_chained).
PLANS: dict[str, Callable[..., list[PlanStep]]] = {
    "em": em_plan,
    "pc": pc_plan,
    "ancestral": ancestral_plan,
    "ode-euler": ode_euler_plan,
    "ddim": ddim_plan,
}

STOCHASTIC = frozenset({"em", "pc", "ancestral"})
DEFAULT_SPACING = {"dpm2m": "logsnr"}   # 10 steps: std within 3% on a log-SNR grid, 37% off on a uniform one


def nfe(sampler: str, steps: int, corrector_steps: int = 1) -> int:
    """Network evaluations one run of `sampler` with `steps` steps costs."""
    get_sampler(sampler)
    per_step = {"ode-heun": 2, "pc": 1 + corrector_steps}.get(sampler, 1)
    return per_step * steps + 1


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise GenccError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}") from None


def _report(callback: Callback | None, k: int, x) -> None:
    if callback is not None:
        callback(k, x)
