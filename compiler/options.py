"""What a user says about their own network: its conventions and the compile settings, checked up front.

A network brought from elsewhere (diffusers, a paper's code, the user's own) differs from gencc's
eps_theta(x, t) in three ways, each named here and fused into the compiled step (models/adapters.py):

  time_input   "t"            the continuous time t in [t_eps, 1], as gencc's own networks take it
               "timestep:N"   DDPM / diffusers discrete timesteps: the network gets (N - 1) t
               "sigma"        the VE noise level sigma_t / gamma_t (k-diffusion, EDM), and the state
                              scaled to x / gamma_t, the VE state those networks expect
  prediction   "eps"          the noise (diffusers "epsilon")
               "x0"           the clean sample (diffusers "sample")
               "v"            v = gamma_t eps - sigma_t x0 (diffusers "v_prediction")
  schedule     "vp"           gencc's continuous linear beta(t) from 0.1 to 20 (runtime/sde.py's VPSDE)
               "linear", "scaled_linear", "squaredcos_cap_v2": diffusers' discrete beta tables

This module imports neither torch nor onnx: the CLI and `gencc.compile` check options before any work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from gencc.runtime.conventions import LABEL_INPUTS, PREDICTION_ALIASES, PREDICTIONS, TimeInput
from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import short
from gencc.runtime.sde import SCHEDULES  # "vp", then diffusers' table names

KINDS = ("diffusion", "gan")


@dataclass(frozen=True)
class CompileOptions:
    """Everything `gencc.compile` and `gencc.from_torch` take besides the source; defaults in the comments."""

    sample_shape: tuple[int, ...] | None = None  # one sample, e.g. (3, 32, 32); read from the source if it says
    kind: str = "diffusion"                       # "diffusion": an eps-style network; "gan": a generator G(z)
    time_input: str = "t"                         # see the module docstring
    prediction: str = "eps"                       # eps | x0 | v (or diffusers' epsilon | sample | v_prediction)
    schedule: str | None = None                   # None: "linear" for timestep:N inputs, else "vp"
    num_train_timesteps: int | None = None        # discrete schedules' N; default: timestep:N's, else 1000
    beta_start: float = 1e-4                      # linear and scaled_linear tables (diffusers' defaults)
    beta_end: float = 0.02
    latent_shape: tuple[int, ...] | None = None   # gan: z's shape, e.g. (64,) or (100, 1, 1)
    num_classes: int = 0                          # > 0: the network takes a class label as a third input
    label_input: str = "onehot"                   # onehot: (B, K) float rows; index: (B,) int64 class ids
    weights: str | Path | None = None             # module:factory sources: a .safetensors state dict
    scheduler: str | Path | None = None           # diffusers sources: a scheduler_config.json
    target: str = "llvm"                          # llvm (this CPU) or cuda
    arch: str | None = None                       # cuda: e.g. sm_80; default sm_90
    force: bool = False                           # replace an existing artifact
    sign: str | Path | None = None                # Ed25519 private key (PEM) to sign the artifact with
    tuning: object | None = None                  # a compiler.tune.TuneOptions

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, KINDS)
        TimeInput.parse(self.time_input)
        _check_choice("prediction", self.prediction, PREDICTIONS + tuple(PREDICTION_ALIASES))
        if self.schedule is not None:
            _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("label_input", self.label_input, LABEL_INPUTS)
        for name in ("sample_shape", "latent_shape"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _shape(name, value))
        n = self.num_train_timesteps
        if n is not None and (type(n) is not int or not 2 <= n <= 100_000):
            raise GenccError(f"num_train_timesteps must be an integer in [2, 100000], got {short(n)}")
        if not (isinstance(self.beta_start, (int, float)) and isinstance(self.beta_end, (int, float))
                and math.isfinite(self.beta_start) and math.isfinite(self.beta_end)
                and 0 < self.beta_start < self.beta_end < 1):
            raise GenccError(f"need 0 < beta_start < beta_end < 1, got {short(self.beta_start)}, "
                             f"{short(self.beta_end)}")
        if type(self.num_classes) is not int or not 0 <= self.num_classes <= 4096:
            raise GenccError(f"num_classes must be an integer in 0..4096, got {short(self.num_classes)}")
        if self.kind == "gan" and self.latent_shape is None:
            raise GenccError("a generator (kind 'gan') needs latent_shape, the shape of its input z, e.g. (64,)")

    @classmethod
    def make(cls, **options) -> CompileOptions:
        """Options from keywords, refusing an unknown one by name (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise GenccError(f"unknown option(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        return cls(**options)

    @property
    def time(self) -> TimeInput:
        return TimeInput.parse(self.time_input)

    @property
    def prediction_kind(self) -> str:
        """The prediction in gencc's names (eps, x0, v), whichever spelling was given."""
        return PREDICTION_ALIASES.get(self.prediction, self.prediction)

    @property
    def schedule_name(self) -> str:
        if self.schedule is not None:
            return self.schedule
        return "linear" if self.time.kind == "timestep" else "vp"

    @property
    def train_steps(self) -> int:
        """N of a discrete schedule."""
        return self.num_train_timesteps or self.time.steps or 1000

    def sde(self):
        """The SDE of the schedule, which the samplers and the in-graph conversions both use."""
        from gencc.runtime import sde as sde_lib

        name = self.schedule_name
        if name == "vp":
            return sde_lib.VPSDE()
        params = {"beta_start": self.beta_start, "beta_end": self.beta_end} if name != "squaredcos_cap_v2" else {}
        return sde_lib.make_sde(name, num_train_timesteps=self.train_steps, **params)

    def conventions(self) -> dict:
        """The manifest's record of what was fused into the step, for `gencc info` and for people."""
        labels = {"label_input": self.label_input} if self.num_classes else {}
        return {"time_input": str(self.time), "prediction": self.prediction_kind, "schedule": self.schedule_name,
                **labels}


def _check_choice(name: str, value, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise GenccError(f"unknown {name} {short(value)}; expected one of {', '.join(choices)}")


def _shape(name: str, value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    try:
        shape = tuple(int(v) for v in value)
        ok = 0 < len(shape) <= 4 and all(0 < d <= 1 << 16 for d in shape) and all(
            float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise GenccError(f"{name} must be 1-4 positive integers like 3,32,32, got {short(value)}")
    return shape
