"""What a model asks of the code that runs its networks (torch, ONNX Runtime, TVM): the `Backend` protocol.

A model (runtime/model.py) never sees a framework. It hands numpy arrays to its backend's `eps`, `generate`
or `decode` and gets numpy back. The fused `step` and the multi-step `chain` work on the backend's own
arrays (a TVM tensor stays on its device between steps): `to_device`/`to_numpy` cross over, and `noise` /
`chain_noise` draw the step noise where the state lives. A backend implements what it has; the ops in
OPTIONAL are the ones it may lack, and the model asks `has(op)` before it uses one. An op a model kind
does not use (a GAN's `eps`, a diffusion model's `generate`) is simply never called.

Class-conditional networks take their labels through the same calls: `eps(x, t, y, w)`,
`step(..., y=, w=)`, `generate(z, y)` (runtime/conditioning.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .noise import SampleNoise

OPTIONAL = ("step", "chain", "noise")   # a fused step, several steps per call, noise drawn on the device


class Backend(Protocol):
    name: str            # "torch", "ort" or "tvm": the serialised form (sample records, CLI output)
    check_every: int     # steps between NaN/inf checks of the fused step's state; >1 where a check costs a copy
    chain_length: int    # steps per `chain` call; 0 without one

    def has(self, op: str) -> bool:
        """Whether this backend offers the optional op `op` (one of OPTIONAL)."""

    def to_device(self, a: np.ndarray) -> Any:
        """numpy -> the backend's array."""

    def to_numpy(self, a: Any) -> np.ndarray:
        """The backend's array -> numpy."""

    def eps(self, x: np.ndarray, t: float, *cond: Any) -> np.ndarray:
        """Diffusion: the network's noise prediction eps(x, t) for states x (B, ...)."""

    def step(self, x: Any, t: float, coef: Any, z: Any = None, x_prev: Any = None, e_prev: Any = None,
             **cond: Any) -> tuple[Any, Any]:
        """Optional, diffusion: the fused step contract (docs/ARTIFACT.md) -> (x_next, eps), on device arrays."""

    def chain(self, x: Any, ts: np.ndarray, coefs: np.ndarray, zs: Any) -> Any:
        """Optional, diffusion: chain_length plan steps in one call (samplers.run_plan_chained)."""

    def chains(self, batch: int) -> bool:
        """Whether `chain` is the faster path at this batch size (a tuned static-batch step can beat it)."""

    def noise(self, noise: SampleNoise, k0: int, k1: int) -> list:
        """Optional: the step noise of steps k0..k1-1, drawn on the device."""

    def chain_noise(self, noise: SampleNoise, draws: list) -> Any:
        """With `chain`: the chain's noise input for the plan's draw indices `draws`."""

    def generate(self, z: np.ndarray, *y: np.ndarray) -> np.ndarray:
        """GAN: the generator's output for latents z (B, latent)."""

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latent diffusion: the decoder's output for latents z (B, *latent_shape)."""


def _absent(op: str) -> Callable:
    def missing(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(f"this backend has no {op!r}")
    return missing


@dataclass(eq=False)
class Functions:
    """A Backend made of plain callables, the way the loaders hand over their closures (and tests an exact
    eps). A function left None is an op this backend does not have."""

    name: str
    eps_fn: Callable | None = None
    step_fn: Callable | None = None
    generate_fn: Callable | None = None
    decode_fn: Callable | None = None
    chain_fn: Callable | None = None
    chain_noise_fn: Callable | None = None
    noise_fn: Callable | None = None
    to_device_fn: Callable = np.asarray
    to_numpy_fn: Callable = np.asarray
    check_every: int = 1
    chain_length: int = 0
    chain_skip: frozenset = frozenset()   # batch sizes that run faster one step per call (tuned libraries)

    def has(self, op: str) -> bool:
        return getattr(self, f"{op}_fn") is not None

    def _fn(self, op: str) -> Callable:
        return getattr(self, f"{op}_fn") or _absent(op)

    def to_device(self, a):
        return self.to_device_fn(a)

    def to_numpy(self, a):
        return self.to_numpy_fn(a)

    def eps(self, x, t, *cond):
        return self._fn("eps")(x, t, *cond)

    def step(self, x, t, coef, z=None, x_prev=None, e_prev=None, **cond):
        return self._fn("step")(x, t, coef, z, x_prev, e_prev, **cond)

    def chain(self, x, ts, coefs, zs):
        return self._fn("chain")(x, ts, coefs, zs)

    def chains(self, batch: int) -> bool:
        return self.chain_fn is not None and batch not in self.chain_skip

    def noise(self, noise, k0, k1):
        return self._fn("noise")(noise, k0, k1)

    def chain_noise(self, noise, draws):
        return self._fn("chain_noise")(noise, draws)

    def generate(self, z, *y):
        return self._fn("generate")(z, *y)

    def decode(self, z):
        return self._fn("decode")(z)
