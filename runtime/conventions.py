"""The conventions of a network brought from elsewhere, as an artifact records them: how it takes time
and what it predicts (docs/YOUR_MODEL.md). Names only, no torch: the adapter that applies them is
models/adapters.py, and the compiler checks a user's options against them (compiler/options.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import GenccError
from .jsonfile import short

PREDICTIONS = ("eps", "x0", "v")
PREDICTION_ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}   # diffusers' names
LABEL_INPUTS = ("onehot", "index")
_TIMESTEP = re.compile(r"timestep:([0-9]{1,6})")


@dataclass(frozen=True)
class TimeInput:
    """How the network takes time: kind "t", "timestep" (with `steps` N) or "sigma"."""

    kind: str
    steps: int = 0   # N of "timestep:N": the network's timesteps run 0 .. N - 1

    @classmethod
    def parse(cls, text: str) -> TimeInput:
        if text in ("t", "sigma"):
            return cls(text)
        m = _TIMESTEP.fullmatch(str(text))
        if m and int(m.group(1)) >= 2:
            return cls("timestep", int(m.group(1)))
        raise GenccError(f"unknown time input {short(text)}; expected 't', 'sigma' or 'timestep:N' "
                         "with N >= 2 the number of training timesteps (e.g. timestep:1000)")

    def __str__(self) -> str:
        return f"timestep:{self.steps}" if self.kind == "timestep" else self.kind
