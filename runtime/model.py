"""A loaded generative model behind one interface, whatever runs its network (torch, ORT, TVM).

Backends build a `Model` from their callables; `Model.sample` owns the chunking, the per-sample noise
and the mapping back to data units, so every backend produces the same samples for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import GenccError
from .noise import SampleNoise
from .normalize import Normalization
from .samplers import STOCHASTIC, get_sampler, time_grid
from .sde import VPSDE

DEFAULT_STEPS = 200
DEFAULT_SAMPLER = "em"


@dataclass
class Model:
    kind: str                                   # "diffusion" or "gan"
    sample_shape: tuple[int, ...]               # one sample, model space = data space shape
    normalization: Normalization
    backend: str                                # "torch", "ort" or "tvm"
    sde: VPSDE | None = None                    # diffusion only
    eps_fn: Callable | None = None              # diffusion: (x (B, ...) np, t float) -> eps
    step_fn: Callable | None = None             # diffusion, optional fused (x, t, a, b, c, z) -> x_next
    generate_fn: Callable | None = None         # gan: z (B, latent) -> x (B, ...)
    latent_shape: tuple[int, ...] = ()          # gan only
    info: dict = field(default_factory=dict)    # the checkpoint or artifact description

    def sample(self, n: int, *, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: int = 0,
               batch_size: int = 1024, callback: Callable[[int, Any], None] | None = None,
               start: int = 0, spacing: str = "uniform") -> np.ndarray:
        """Samples start .. start+n-1 in the data's own units, shape (n, *sample_shape), float32.

        Sample i depends only on (seed, i): batch size and chunking do not change it.
        """
        _check_positive("n", n)
        _check_positive("batch-size", batch_size)
        if self.kind == "diffusion":
            _check_positive("steps", steps)
            get_sampler(sampler)
        out = np.empty((n,) + self.sample_shape, np.float32)
        for lo in range(0, n, batch_size):
            idx = np.arange(start + lo, start + min(n, lo + batch_size), dtype=np.int64)
            out[lo:lo + len(idx)] = self._sample_chunk(idx, steps, sampler, seed, callback, spacing)
        return self.normalization.decode(out)

    def _sample_chunk(self, idx: np.ndarray, steps: int, sampler: str, seed: int, callback, spacing: str) -> np.ndarray:
        if self.kind == "gan":
            x = np.asarray(self.generate_fn(SampleNoise(seed, idx, self.latent_shape).prior()))
            _check_finite(x, "the generator output")
            if callback:
                callback(0, x)
            return x
        noise = SampleNoise(seed, idx, self.sample_shape)

        def watch(k: int, x) -> None:
            _check_finite(x, f"step {k}")
            if callback:
                callback(k, x)

        fn = get_sampler(sampler)
        x = fn(self.eps_fn, noise.prior(), time_grid(self.sde, steps, spacing), self.sde,
               noise.step if sampler in STOCHASTIC else None, callback=watch, step_fn=self.step_fn)
        x = np.asarray(x, dtype=np.float32)
        _check_finite(x, "the final denoising step")
        return x


def _check_positive(name: str, v: int) -> None:
    if not isinstance(v, (int, np.integer)) or v <= 0:
        raise GenccError(f"{name} must be a positive integer, got {v!r}")


def _check_finite(x, where: str) -> None:
    x = np.asarray(x)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise GenccError(f"sampling produced {bad} NaN/inf values at {where}; the model may be diverged "
                         f"or the step count too small for this sampler")
