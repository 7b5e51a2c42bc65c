"""A loaded generative model behind one interface, whatever runs its network (torch, ORT, TVM).

Backends build a `Model` from their callables; `Model.sample` owns the chunking, the per-sample noise
and the mapping back to data units, so every backend produces the same samples for the same seed.
A latent-diffusion model runs the same reverse-SDE loop on its latent shape, then decodes:
x = decoder(x_L / latent_scale) (models/latent.py).
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .conditioning import check_condition, chunk_labels, label_rows
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import GenccError, size_text
from .noise import SampleNoise
from .normalize import Normalization
from .samplers import (DEFAULT_SPACING, PLANS, STOCHASTIC, PlanStep, affine_step, get_sampler, run_plan_chained,
                       time_grid)
from .sde import VPSDE
from .watch import LastEval, StepView


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
    noise_steps: Callable | None = None         # (SampleNoise, k0, k1) -> the draws of steps k0..k1-1 on the device
    chain_fn: Callable | None = None            # optional: several plan steps per call (samplers.run_plan_chained)
    chain_noise: Callable | None = None         # (SampleNoise, draws) -> chain_fn's noise input; with chain_fn
    chain_length: int = 0
    chain_skip: frozenset = frozenset()         # batch sizes that run faster one step per call (tuned libraries)
    # > 0: class-conditional (runtime/conditioning.py). The callables then take one-hot rows y (and the
    # guidance w): eps_fn(x, t, y, w), step_fn(..., y=, w=), generate_fn(z, y).
    num_classes: int = 0
    decode_fn: Callable | None = None           # latent-diffusion: z (B, *latent_shape) np -> x (B, *sample_shape) np
    latent_scale: float = 1.0                   # latent-diffusion: the state is z * latent_scale
    around_sample: Callable = contextlib.nullcontext   # entered once per sample(): torch's thread policy
    # The network's largest intermediate tensor, bytes per sample (compiler/flops.py; for torch, measured);
    # 0: unknown, and the memory check assumes ACTIVATION_MULTIPLE samples' worth.
    activation_bytes: int = 0

    @classmethod
    def from_manifest(cls, m, backend: str, **callables) -> "Model":
        """A Model for an artifact's manifest (see runtime/artifact.py), with the backend's callables."""
        return cls(m.model, m.sample_shape, m.normalization, backend, sde=m.sde, latent_shape=m.latent_shape,
                   info=m.raw, data_name=str(m.raw.get("data", "")), num_classes=m.num_classes,
                   latent_scale=m.latent_scale, activation_bytes=_manifest_activations(m), **callables)

    def sample(self, n: int, *, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: int = 0,
               batch_size: int = DEFAULT_BATCH_SIZE, callback: Callable[[int, Any], None] | None = None,
               start: int = 0, spacing: str | None = None, options: dict | None = None,
               on_step: Callable[[StepView], None] | None = None, label=None,
               guidance: float | None = None) -> np.ndarray:
        """Samples start .. start+n-1 in the data's own units, shape (n, *sample_shape), float32.

        Sample i depends only on (seed, i): batch size and chunking do not change it. `spacing`
        ("uniform" or "logsnr") defaults to the sampler's own choice; `options` go to the sampler
        (e.g. {"corrector_steps": 2, "snr": 0.16} for pc). `on_step(view)` sees each step of each chunk
        with its denoised estimate at no extra network call (runtime/watch.py). Class-conditional
        models only: `label`, one class for every sample or a sequence of n; `guidance` w >= 0, the
        classifier-free guidance scale of diffusion models, eps = (1 + w) eps(x, t, label) - w eps(x, t,
        null), default 0.
        """
        check_condition(self.kind, self.num_classes, label, guidance)
        _check_positive("n", n)
        _check_positive("batch-size", batch_size)
        _check_memory(n, batch_size, self.sample_shape, self.activation_bytes)
        if self.kind != "gan":
            _check_positive("steps", steps)
            get_sampler(sampler)
        with self.around_sample(), _allocation_failure_as_error(n, batch_size):
            out = np.empty((n,) + self.sample_shape, np.float32)
            for lo in range(0, n, batch_size):
                idx = np.arange(start + lo, start + min(n, lo + batch_size), dtype=np.int64)
                fns = self._conditioned(chunk_labels(label, idx, n, start), idx, guidance)
                out[lo:lo + len(idx)] = self._sample_chunk(idx, steps, sampler, seed, callback, spacing,
                                                           options or {}, on_step, *fns)
            return self.normalization.decode(out)

    def _conditioned(self, labels: np.ndarray, idx: np.ndarray, guidance: float | None) -> tuple:
        """(eps_fn, step_fn, generate_fn) with this chunk's labels and the guidance bound in."""
        if not self.num_classes:
            return self.eps_fn, self.step_fn, self.generate_fn
        y = label_rows(self.kind, labels, idx, self.num_classes)
        if self.kind == "gan":
            return None, None, lambda z: self.generate_fn(z, y)
        w = float(guidance or 0.0)
        step_fn = None
        if self.step_fn is not None:
            y_dev = self.to_device(y)   # uploaded once per chunk: the labels stay on the device
            step_fn = lambda *a, **k: self.step_fn(*a, y=y_dev, w=w, **k)   # noqa: E731
        return (lambda x, t: self.eps_fn(x, t, y, w)), step_fn, None

    def _sample_chunk(self, idx: np.ndarray, steps: int, sampler: str, seed: int, callback, spacing, options,
                      on_step, eps_fn, step_fn, generate_fn) -> np.ndarray:
        if self.kind == "gan":
            x = np.asarray(self.to_numpy(generate_fn(SampleNoise(seed, idx, self.latent_shape).prior())))
            _check_finite(x, "the generator output")
            if callback:
                callback(0, x)
            if on_step:
                on_step(StepView(0, int(idx[0]), None, x, normalization=self.normalization))
            return x
        if self.kind == "latent-diffusion":
            x = self._diffuse(idx, steps, sampler, seed, callback, spacing, options, self.latent_shape, on_step,
                              eps_fn, step_fn)
            return self._decode_latent(x)
        return self._diffuse(idx, steps, sampler, seed, callback, spacing, options, self.sample_shape, on_step,
                             eps_fn, step_fn)

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

    def _diffuse(self, idx, steps, sampler, seed, callback, spacing, options, shape, on_step, eps_fn,
                 step_fn) -> np.ndarray:
        """The reverse-SDE loop on states of `shape`, in model space."""
        noise = SampleNoise(seed, idx, shape)
        fused = step_fn is not None
        to_device = self.to_device if fused else np.asarray
        to_numpy = self.to_numpy if fused else np.asarray
        every = self.check_every if fused else 1
        # The unfused step is the one the samplers would build; naming it here lets LastEval watch it.
        step = step_fn if fused else affine_step(eps_fn)
        last = LastEval(step) if on_step else None

        def watch(k: int, x) -> None:
            if callback or (k + 1) % every == 0:
                x = to_numpy(x)
                _check_finite(x, f"step {k}" if every == 1 else f"step {k} (checked every {every} steps)")
            if callback:
                callback(k, x)
            if on_step:
                on_step(StepView(k, int(idx[0]), float(last.t), x, last.x_in, last.eps, self.sde,
                                 self.normalization, to_numpy))

        spacing = spacing or DEFAULT_SPACING.get(sampler, "uniform")
        if self.chain_fn is not None and sampler in PLANS and callback is None and on_step is None \
                and not self.num_classes and len(idx) not in self.chain_skip:
            # Several steps per compiled call; watching needs every step, so it takes the other path
            # (and the chain has no label inputs: conditional models are never given one).
            plan = _cached_plan(self.sde, sampler, steps, spacing, options)   # every chunk shares it
            # The few steps after the last full chain draw exactly their own noise, not a whole block.
            tail = [p.draw for p in plan[len(plan) // self.chain_length * self.chain_length:] if p.draw is not None]
            x = run_plan_chained(self.chain_fn, self.chain_length, step_fn, to_device(noise.prior()), plan,
                                 self._bulk_noise(noise, True, max(tail) - min(tail) + 1 if tail else 1),
                                 lambda draws: self.chain_noise(noise, draws),
                                 check=lambda k, x: _check_finite(to_numpy(x), f"step {k} (checked every "
                                                                  f"{self.chain_length} steps)"))
            x = np.asarray(to_numpy(x), dtype=np.float32)
            _check_finite(x, "the final denoising step")
            return x
        fn = get_sampler(sampler)
        x = fn(eps_fn, to_device(noise.prior()), time_grid(self.sde, steps, spacing), self.sde,
               self._bulk_noise(noise, fused) if sampler in STOCHASTIC else None,
               callback=watch, step_fn=last or step, **options)
        x = np.asarray(to_numpy(x), dtype=np.float32)
        _check_finite(x, "the final denoising step")
        return x

    def _bulk_noise(self, noise: SampleNoise, on_device: bool, block: int | None = None) -> "_BulkNoise":
        """Step noise for the fused step (on the backend's device) or for the unfused one (numpy)."""
        if on_device and self.noise_steps is not None:
            return _BulkNoise(noise, self.noise_steps, block)
        to_device = self.to_device if on_device else np.asarray
        return _BulkNoise(noise, lambda noise, k0, k1: [to_device(z) for z in noise.steps(k0, k1)], block)


_PLAN_CACHE: dict = {}   # (sde, sampler, steps, spacing, options) -> plan; plans are pure functions of these


def _cached_plan(sde: VPSDE, sampler: str, steps: int, spacing: str, options: dict) -> list[PlanStep]:
    key = (repr(sde), sampler, steps, spacing, tuple(sorted(options.items())))
    if key not in _PLAN_CACHE:
        if len(_PLAN_CACHE) > 64:
            _PLAN_CACHE.clear()
        _PLAN_CACHE[key] = PLANS[sampler](time_grid(sde, steps, spacing), sde, **options)
    return _PLAN_CACHE[key]


class _BulkNoise:
    """Noise for steps k, k+1, ... drawn `block` steps at a time by `draw(noise, k0, k1)`, then handed
    out step by step (TVM on CPU draws a block with its compiled kernel, or with one copy from numpy)."""

    def __init__(self, noise: SampleNoise, draw: Callable, block: int | None = None):
        # Small states get long blocks: at batch 1 a draw's fixed cost, not its arithmetic, is what a
        # block of 16 steps would pay again and again.
        per_step = len(noise.indices) * math.prod(noise.shape)
        self.noise, self.draw = noise, draw
        self.block = block or int(np.clip((1 << 16) // max(per_step, 1), 16, 256))
        self.k0, self.buf = -1, None

    def __call__(self, k: int):
        if not (0 <= k - self.k0 < self.block) or self.buf is None:
            self.k0, self.buf = k, self.draw(self.noise, k, k + self.block)
        return self.buf[k - self.k0]


def _check_positive(name: str, v: int) -> None:
    if not isinstance(v, (int, np.integer)) or v <= 0:
        raise GenccError(f"{name} must be a positive integer, got {v!r}")


ACTIVATION_MULTIPLE = 256   # an artifact or Model that does not know its activations: 256 samples' worth
LIVE_ACTIVATIONS = 4        # largest intermediates alive at once: an op's input and output, a skip, the eps
_ALLOCATION_FAILURES = ("bad_alloc", "bad allocation", "out of memory", "cannot allocate memory",
                        "failed to allocate", "memory allocation")


def _check_memory(n: int, batch_size: int, shape: tuple[int, ...], activation_bytes: int = 0) -> None:
    """Refuse up front what cannot fit, rather than be killed part-way: the output and its decoded
    copy, ~24 batch-sized buffers (state, eps, previous state and eps, 16 steps of bulk noise), and the
    network's activations, LIVE_ACTIVATIONS of its largest intermediate per sample in the batch."""
    sample = 4 * math.prod(shape)
    activations = LIVE_ACTIVATIONS * (activation_bytes or ACTIVATION_MULTIPLE * sample)
    need = sample * (2 * n + 24 * min(n, batch_size)) + activations * min(n, batch_size)
    total = _physical_memory()
    if total and need > total:
        raise GenccError(f"sampling n={n} with batch size {batch_size} and sample shape {shape} needs about "
                         f"{size_text(need)} of memory (the network's activations "
                         f"{size_text(activations * min(n, batch_size))} of it), more than this machine's "
                         f"{size_text(total)}; use a smaller batch size (or n), or stream to a file "
                         "(gencc sample, runtime/stream.py)")


@contextlib.contextmanager
def _allocation_failure_as_error(n: int, batch_size: int):
    """An allocation that fails in spite of the estimate (other processes, a container limit) as one line:
    numpy raises MemoryError, TVM and ONNX Runtime a RuntimeError carrying std::bad_alloc or their own words."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:
        text = str(e)
        if not isinstance(e, MemoryError) and not any(w in text.lower() for w in _ALLOCATION_FAILURES):
            raise
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)[:200]
        raise GenccError(f"sampling n={n} at batch size {batch_size} ran out of memory ({first}); "
                         "use a smaller batch size") from None


def _manifest_activations(m) -> int:
    """The largest activation_bytes_per_sample of an artifact's functions; 0 if any predates the field."""
    values = [f.get("activation_bytes_per_sample", 0) for f in m.functions.values()]
    return 0 if not values or 0 in values else max(values)


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
