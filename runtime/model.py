"""A loaded generative model behind one interface, whatever runs its network (torch, ORT, TVM).

Backends build a `Model` from their callables; `Model.sample` owns the chunking, the per-sample noise
and the mapping back to data units, so every backend produces the same samples for the same seed.
A latent-diffusion model runs the same reverse-SDE loop on its latent shape, then decodes:
x = decoder(x_L / latent_scale) (models/latent.py).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import GenccError
from .noise import SampleNoise
from .normalize import Normalization
from .samplers import DEFAULT_SPACING, STOCHASTIC, get_sampler, time_grid
from .sde import VPSDE

DEFAULT_STEPS = 200
DEFAULT_SAMPLER = "em"


@dataclass
class Model:
    kind: str                                   # "diffusion", "gan" or "latent-diffusion"
    sample_shape: tuple[int, ...]               # one sample, model space = data space shape
    normalization: Normalization
    backend: str                                # "torch", "ort" or "tvm"
    sde: VPSDE | None = None                    # diffusion only
    eps_fn: Callable | None = None              # diffusion: (x (B, ...) np, t float) -> eps
    step_fn: Callable | None = None             # diffusion, optional fused (x, t, coef, z, x_prev, e_prev) -> (x_next, eps)
    generate_fn: Callable | None = None         # gan: z (B, latent) -> x (B, ...)
    latent_shape: tuple[int, ...] = ()          # gan: z's shape; latent-diffusion: the diffusion state's
    info: dict = field(default_factory=dict)    # the checkpoint or artifact description
    data_name: str = ""                         # the training data: a built-in name or a user path
    to_device: Callable = np.asarray            # numpy -> the backend's array (a TVM tensor stays on its device)
    to_numpy: Callable = np.asarray             # the backend's array -> numpy
    check_every: int = 1                        # steps between NaN/inf checks; >1 where a check costs a copy
    decode_fn: Callable | None = None           # latent-diffusion: z (B, *latent_shape) np -> x (B, *sample_shape) np
    latent_scale: float = 1.0                   # latent-diffusion: the state is z * latent_scale

    @classmethod
    def from_manifest(cls, m, backend: str, **callables) -> "Model":
        """A Model for an artifact's manifest (see runtime/artifact.py), with the backend's callables."""
        return cls(m.model, m.sample_shape, m.normalization, backend, sde=m.sde,
                   latent_shape=m.latent_shape, info=m.raw, data_name=str(m.raw.get("data", "")),
                   latent_scale=m.latent_scale, **callables)

    def sample(self, n: int, *, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: int = 0,
               batch_size: int = 1024, callback: Callable[[int, Any], None] | None = None,
               start: int = 0, spacing: str | None = None, options: dict | None = None) -> np.ndarray:
        """Samples start .. start+n-1 in the data's own units, shape (n, *sample_shape), float32.

        Sample i depends only on (seed, i): batch size and chunking do not change it. `spacing`
        ("uniform" or "logsnr") defaults to the sampler's own choice; `options` go to the sampler
        (e.g. {"corrector_steps": 2, "snr": 0.16} for pc).
        """
        _check_positive("n", n)
        _check_positive("batch-size", batch_size)
        _check_memory(n, batch_size, self.sample_shape)
        if self.kind != "gan":
            _check_positive("steps", steps)
            get_sampler(sampler)
        out = np.empty((n,) + self.sample_shape, np.float32)
        for lo in range(0, n, batch_size):
            idx = np.arange(start + lo, start + min(n, lo + batch_size), dtype=np.int64)
            out[lo:lo + len(idx)] = self._sample_chunk(idx, steps, sampler, seed, callback, spacing, options or {})
        return self.normalization.decode(out)

    def _sample_chunk(self, idx: np.ndarray, steps: int, sampler: str, seed: int, callback, spacing, options) -> np.ndarray:
        if self.kind == "gan":
            x = np.asarray(self.to_numpy(self.generate_fn(SampleNoise(seed, idx, self.latent_shape).prior())))
            _check_finite(x, "the generator output")
            if callback:
                callback(0, x)
            return x
        if self.kind == "latent-diffusion":
            x = self._diffuse(idx, steps, sampler, seed, callback, spacing, options, self.latent_shape)
            return self._decode_latent(x)
        return self._diffuse(idx, steps, sampler, seed, callback, spacing, options, self.sample_shape)

    def decode(self, x_latent: np.ndarray) -> np.ndarray:
        """A latent-diffusion state (B, *latent_shape), e.g. a callback's intermediate x, as images in
        data units: for previews of the reverse process."""
        if self.kind != "latent-diffusion":
            raise GenccError(f"decode applies to latent-diffusion models, not {self.kind}")
        x = np.asarray(x_latent, dtype=np.float32)
        if x.shape[1:] != self.latent_shape:
            raise GenccError(f"decode takes states of shape (B, {', '.join(map(str, self.latent_shape))}), got {x.shape}")
        return self.normalization.decode(self._decode_latent(x))

    def _decode_latent(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(self.decode_fn(x / np.float32(self.latent_scale)), dtype=np.float32)
        _check_finite(x, "the decoder output")
        return x

    def _diffuse(self, idx, steps, sampler, seed, callback, spacing, options, shape) -> np.ndarray:
        """The reverse-SDE loop on states of `shape`, in model space."""
        noise = SampleNoise(seed, idx, shape)
        fused = self.step_fn is not None
        to_device = self.to_device if fused else np.asarray
        to_numpy = self.to_numpy if fused else np.asarray
        every = self.check_every if fused else 1

        def watch(k: int, x) -> None:
            if callback or (k + 1) % every == 0:
                x = to_numpy(x)
                _check_finite(x, f"step {k}" if every == 1 else f"step {k} (checked every {every} steps)")
            if callback:
                callback(k, x)

        fn = get_sampler(sampler)
        spacing = spacing or DEFAULT_SPACING.get(sampler, "uniform")
        x = fn(self.eps_fn, to_device(noise.prior()), time_grid(self.sde, steps, spacing), self.sde,
               _BulkNoise(noise, to_device) if sampler in STOCHASTIC else None,
               callback=watch, step_fn=self.step_fn if fused else None, **options)
        x = np.asarray(to_numpy(x), dtype=np.float32)
        _check_finite(x, "the final denoising step")
        return x


class _BulkNoise:
    """Noise for steps k, k+1, ... generated `block` steps at a time, then handed out step by step."""

    def __init__(self, noise: SampleNoise, to_device: Callable, block: int = 16):
        self.noise, self.to_device, self.block = noise, to_device, block
        self.k0, self.buf = -1, None

    def __call__(self, k: int):
        if not (0 <= k - self.k0 < self.block) or self.buf is None:
            self.k0, self.buf = k, self.noise.steps(k, k + self.block)
        return self.to_device(self.buf[k - self.k0])


def _check_positive(name: str, v: int) -> None:
    if not isinstance(v, (int, np.integer)) or v <= 0:
        raise GenccError(f"{name} must be a positive integer, got {v!r}")


def _check_memory(n: int, batch_size: int, shape: tuple[int, ...]) -> None:
    """Refuse up front what cannot fit, rather than be killed part-way: the output and its decoded
    copy, plus ~24 batch-sized buffers (state, eps, previous state and eps, 16 steps of bulk noise,
    network activations)."""
    need = 4 * math.prod(shape) * (2 * n + 24 * min(n, batch_size))
    total = _physical_memory()
    if total and need > total:
        raise GenccError(f"sampling n={n} with batch size {batch_size} and sample shape {shape} needs about "
                         f"{need / 2 ** 30:.3g} GiB of memory, more than this machine's {total / 2 ** 30:.3g} GiB; "
                         "use a smaller n or batch size, or stream to a file (gencc sample, runtime/stream.py)")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # not a POSIX system that reports it
        return None


def _check_finite(x, where: str) -> None:
    x = np.asarray(x)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise GenccError(f"sampling produced {bad} NaN/inf values at {where}; the model may be diverged "
                         f"or the step count too small for this sampler")
