"""The variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW (Song et al. 2021), closed forms.

One class serves numpy (the runtime) and torch (training): every method uses only arithmetic and `exp`/
`log`/`sqrt`, dispatched on the argument's type, so the two versions cannot drift apart.
DiscreteVPSDE is the same process over a DDPM beta table (diffusers' linear, scaled_linear and
squaredcos_cap_v2); `make_sde`, `sde_from_dict` and `sde_from_scheduler_config` build either kind by name,
from its manifest record, or from a diffusers scheduler_config.json.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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

    def t_from_lambda(self, lam):
        """The time whose lambda_ is `lam`: B = log(1 + e^{-2 lambda}), then the root of the quadratic B(t)."""
        big_b = _fn("log1p", _fn("exp", -2.0 * lam))
        k = 0.5 * (self.beta_max - self.beta_min)
        return (-self.beta_min + _fn("sqrt", self.beta_min ** 2 + 4 * k * big_b)) / (2 * k)

    def to_dict(self) -> dict:
        return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_eps": self.t_eps}

    @classmethod
    def from_dict(cls, d: dict) -> VPSDE:
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


def _linear_betas(n: int, start: float, end: float) -> np.ndarray:
    return np.linspace(start, end, n)


def _scaled_linear_betas(n: int, start: float, end: float) -> np.ndarray:
    return np.linspace(start ** 0.5, end ** 0.5, n) ** 2   # latent diffusion's: linear in sqrt(beta)


def _cosine_betas(n: int, start: float, end: float) -> np.ndarray:
    """Nichol & Dhariwal's alpha_bar(s) = cos^2((s + 0.008) / 1.008 pi/2), each beta capped at 0.999."""
    s = np.arange(n + 1) / n
    alpha_bar = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)


# The beta tables of diffusers' DDPMScheduler(beta_schedule=...), computed in float64.
BETA_TABLES = {"linear": _linear_betas, "scaled_linear": _scaled_linear_betas, "squaredcos_cap_v2": _cosine_betas}
_USES_BETA_RANGE = ("linear", "scaled_linear")
SCHEDULES = ("vp",) + tuple(BETA_TABLES)   # "vp": VPSDE, the continuous linear beta(t) gencc trains with


@dataclass(frozen=True, kw_only=True)
class DiscreteVPSDE(VPSDE):
    """The VP-SDE of a DDPM beta table of N steps (diffusers' schedules), as a process in continuous time.

    Timestep i is t = i / (N - 1). B(t) = -log alpha_bar(t), the VP-SDE's int_0^t beta, is the table's
    -log alpha_bar_i at t_i and linear in t between: monotone, exact at every trained timestep, and
    beta(t) = B'(t) = (N - 1)(B_{i+1} - B_i) on the step (t_i, t_{i+1}], about (N - 1) beta_{i+1}. Every
    other coefficient (gamma, sigma, lambda, drift) is VPSDE's own formula over these two.
    """

    schedule: str = "linear"            # a key of BETA_TABLES
    num_train_timesteps: int = 1000     # N, the table's length
    beta_start: float = 1e-4            # diffusers' defaults; squaredcos_cap_v2 uses neither
    beta_end: float = 0.02
    t_eps: float = 0.0                  # timestep 0 is trained and has sigma > 0, so sampling may end there
    beta_min: float = field(default=math.nan, init=False, repr=False, compare=False)   # the linear schedule's:
    beta_max: float = field(default=math.nan, init=False, repr=False, compare=False)   # NaN, so misuse shows
    _big_b: np.ndarray = field(init=False, repr=False, compare=False)    # B_i, float64, (N,); set by __post_init__

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, str) or self.schedule not in BETA_TABLES:
            raise GenccError(f"unknown noise schedule {short(self.schedule)} for a DDPM table; "
                             f"expected one of {', '.join(BETA_TABLES)}")
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= 100_000:
            raise GenccError(f"num_train_timesteps must be an integer in [2, 100000], got {short(n)}")
        if self.schedule in _USES_BETA_RANGE and not 0 < self.beta_start < self.beta_end < 1:
            raise GenccError(f"the {self.schedule} schedule needs 0 < beta_start < beta_end < 1, "
                             f"got beta_start={self.beta_start}, beta_end={self.beta_end}")
        if not 0 <= self.t_eps < 1:
            raise GenccError(f"need 0 <= t_eps < 1, got t_eps={self.t_eps}")
        betas = BETA_TABLES[self.schedule](int(n), float(self.beta_start), float(self.beta_end))
        big_b = np.cumsum(-np.log1p(-betas))   # -log prod(1 - beta), without the product's rounding
        big_b.setflags(write=False)
        object.__setattr__(self, "_big_b", big_b)

    def _segment(self, t):
        """(B_i, B_{i+1}, f, N - 1): t lies the fraction f through the step (t_i, t_{i+1}]."""
        n = self.num_train_timesteps - 1
        u = t * n
        if isinstance(u, (float, int)):
            i = min(max(math.ceil(u) - 1, 0), n - 1)
            return float(self._big_b[i]), float(self._big_b[i + 1]), u - i, n
        if isinstance(u, np.ndarray) or np.isscalar(u):
            i = np.clip(np.ceil(u) - 1, 0, n - 1).astype(np.intp)
            return self._big_b[i], self._big_b[i + 1], u - i, n
        i = (u.ceil() - 1).clamp(0, n - 1).long()   # torch.Tensor; the table follows its dtype and device
        big_b = u.new_tensor(self._big_b)
        return big_b[i], big_b[i + 1], u - i, n

    def beta(self, t):
        lo, hi, _, n = self._segment(t)
        return (hi - lo) * n

    def int_beta(self, t):
        """B(t), interpolated so that it is exact at both ends of each step."""
        lo, hi, f, _ = self._segment(t)
        return (1.0 - f) * lo + f * hi

    def t_from_lambda(self, lam):
        """The time whose lambda_ is `lam` (numpy or float): B = log(1 + e^{-2 lambda}), then B's inverse."""
        big_b = np.log1p(np.exp(-2.0 * np.asarray(lam, dtype=np.float64)))
        i = np.clip(np.searchsorted(self._big_b, big_b), 1, len(self._big_b) - 1)
        lo, hi = self._big_b[i - 1], self._big_b[i]
        t = (i - 1 + (big_b - lo) / (hi - lo)) / (len(self._big_b) - 1)
        return float(t) if t.ndim == 0 else t

    def to_dict(self) -> dict:
        return {"kind": "vp-discrete", "schedule": self.schedule, "num_train_timesteps": int(self.num_train_timesteps),
                "beta_start": self.beta_start, "beta_end": self.beta_end, "t_eps": self.t_eps}

    @classmethod
    def from_dict(cls, d: dict) -> DiscreteVPSDE:
        keys = ("kind", "schedule", "num_train_timesteps", "beta_start", "beta_end", "t_eps")
        if not isinstance(d, dict) or d.get("kind") != "vp-discrete" or sorted(d) != sorted(keys):
            raise GenccError(f"malformed SDE record {short(d)}: a discrete VP schedule has exactly the keys "
                             f"{', '.join(keys)}, with kind 'vp-discrete'")
        if d["schedule"] not in BETA_TABLES:   # "vp" included: that is the other record kind
            return cls(schedule=d["schedule"])     # refuses it, naming the known
        return _make_discrete(d["schedule"], **{k: v for k, v in d.items() if k not in ("kind", "schedule")})


def make_sde(schedule: str, **params) -> VPSDE:
    """The noise schedule called `schedule`, with its parameters (as in to_dict); unknown names are refused."""
    if schedule not in SCHEDULES:
        raise GenccError(f"unknown noise schedule {short(schedule)}; expected one of {', '.join(SCHEDULES)}")
    floats = ("beta_min", "beta_max", "beta_start", "beta_end", "t_eps")
    for k, v in params.items():
        if k in floats and (isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v)):
            raise GenccError(f"noise schedule {k} must be a finite number, got {short(v)}")
    try:
        if schedule == "vp":
            return VPSDE(**params)
        return DiscreteVPSDE(schedule=schedule, **params)
    except TypeError as e:   # a parameter this schedule does not have
        raise GenccError(f"bad parameters for noise schedule {schedule!r}: {one_line(e)}") from None


def _make_discrete(schedule: str, **params) -> DiscreteVPSDE:
    """make_sde for a schedule already checked to be a BETA_TABLES key, typed as what it returns then."""
    sde = make_sde(schedule, **params)
    assert isinstance(sde, DiscreteVPSDE), f"{schedule!r} is not a discrete schedule"
    return sde


def sde_from_dict(d: dict) -> VPSDE:
    """The SDE a manifest or checkpoint records, of either kind."""
    if isinstance(d, dict) and d.get("kind") == "vp-discrete":
        return DiscreteVPSDE.from_dict(d)
    return VPSDE.from_dict(d)


def sde_from_scheduler_config(config: dict, t_eps: float = 0.0) -> DiscreteVPSDE:
    """The schedule a diffusers scheduler config (scheduler_config.json) trains with; its defaults are diffusers'.

    Only the beta table matters: the sampler, its time grid and prediction type are gencc's own choices.
    """
    if not isinstance(config, dict):
        raise GenccError(f"a scheduler config must be a JSON object, got {short(config)}")
    if config.get("trained_betas") is not None:
        raise GenccError("scheduler config has trained_betas: only the named schedules "
                         f"{', '.join(BETA_TABLES)} are supported")
    if config.get("rescale_betas_zero_snr"):
        raise GenccError("scheduler config has rescale_betas_zero_snr: a zero terminal SNR has no finite log-SNR "
                         "at t = 1, which the samplers need")
    schedule = config.get("beta_schedule", "linear")
    if not isinstance(schedule, str) or schedule not in BETA_TABLES:
        raise GenccError(f"unknown noise schedule {short(schedule)} in the scheduler config; "
                         f"expected one of {', '.join(BETA_TABLES)}")
    return _make_discrete(schedule, t_eps=t_eps,
                          **{k: config.get(k, v) for k, v in (("num_train_timesteps", 1000), ("beta_start", 1e-4),
                                                               ("beta_end", 0.02))})
