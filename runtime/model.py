"""A loaded generative model: one class per kind, whatever backend runs its network (torch, ORT, TVM).

`DiffusionModel` runs the reverse-SDE loop, `LatentDiffusionModel` runs the same loop on its latent shape
and then decodes, x = decoder(x_L / latent_scale) (models/latent.py), and `GanModel` makes one generator
pass; class conditioning is an option of diffusion and GAN models (`num_classes`). The network calls go to
the model's `net`, a Backend (runtime/backend.py). `Model.sample` owns the chunking, the per-sample noise
and the mapping back to data units, so every backend produces the same samples for the same seed.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .backend import Backend, Functions
from .conditioning import check_condition, chunk_labels, label_rows
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLER, DEFAULT_STEPS
from .errors import GenccError, size_text
from .kinds import Kind
from .noise import SampleNoise
from .normalize import Normalization
from .samplers import (
    DEFAULT_SPACING,
    PLANS,
    STOCHASTIC,
    PlanStep,
    affine_step,
    get_sampler,
    run_plan_chained,
    time_grid,
)
from .sde import VPSDE
from .watch import LastEval, StepView

PLAN_CACHE_SIZE = 64   # plans kept per model: a long-running server sampling many step counts stays bounded


@dataclass(frozen=True)
class SamplingConfig:
    """How to draw samples: everything Model.sample takes besides n and the callbacks.

    `spacing` ("uniform" or "logsnr") None: the sampler's own choice; `options` go to the sampler (e.g.
    {"corrector_steps": 2, "snr": 0.16} for pc); `label` and `guidance` apply to class-conditional models
    only; `start` is the index of the first sample (sample i depends only on (seed, i)).
    """

    steps: int = DEFAULT_STEPS
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    spacing: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    label: Any = None
    guidance: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    start: int = 0

    def __post_init__(self) -> None:   # frozen all the way down: a caller's dict changed later changes nothing
        object.__setattr__(self, "options", types.MappingProxyType(dict(self.options or {})))

    @property
    def grid_spacing(self) -> str:
        return self.spacing or DEFAULT_SPACING.get(self.sampler, "uniform")


@dataclass(frozen=True)
class Watchers:
    """Who watches a sample call: `callback(k, x)` after each step, `on_step(StepView)` (runtime/watch.py)."""

    callback: Callable[[int, Any], None] | None = None
    on_step: Callable[[StepView], None] | None = None

    @property
    def any(self) -> bool:
        return self.callback is not None or self.on_step is not None


@dataclass(frozen=True)
class _Chunk:
    """One chunk of a sample call: the sample indices and the network calls with its labels bound in."""

    idx: np.ndarray
    seeds: Any = None                  # one seed per row (sample_rows); None: the config's seed
    eps: Callable | None = None        # diffusion: (x, t) -> eps
    step: Callable | None = None       # diffusion with a fused step: the Backend.step contract
    generate: Callable | None = None   # gan: z -> x


@dataclass(eq=False)
class Model:
    """What every kind has: the sample's shape and units, the backend running the network, and sample()."""

    kind: ClassVar[Kind]
    sample_shape: tuple[int, ...]               # one sample, model space = data space shape
    normalization: Normalization
    net: Backend                                # runs the network(s): runtime/backend.py
    info: dict = field(default_factory=dict)    # the checkpoint or artifact description
    data_name: str = ""                         # the training data: a built-in name or a user path
    num_classes: int = 0                        # > 0: class-conditional (diffusion and GAN; conditioning.py)
    # Entered once per sample(): the torch backend's thread policy (runtime/threads.py).
    around_sample: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    # The network's largest intermediate tensor, bytes per sample (compiler/flops.py; for torch, measured);
    # 0: unknown, and the memory check assumes ACTIVATION_MULTIPLE samples' worth.
    activation_bytes: int = 0

    @property
    def backend(self) -> str:
        """"torch", "ort" or "tvm"."""
        return self.net.name

    @classmethod
    def from_manifest(cls, m, net: Backend) -> Model:
        """The model of an artifact's kind for its manifest (runtime/artifact.py), running on `net`."""
        kind_cls = MODEL_CLASSES[Kind(m.model)]
        return kind_cls(m.sample_shape, m.normalization, net, info=m.raw, data_name=str(m.raw.get("data", "")),
                        activation_bytes=_manifest_activations(m), **kind_cls._manifest_fields(m))

    @classmethod
    def _manifest_fields(cls, m) -> dict:
        return {}

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
        null), default 0. The same as `sample_with(n, SamplingConfig(...), Watchers(callback, on_step))`.
        """
        config = SamplingConfig(steps, sampler, seed, spacing, options or {}, label, guidance, batch_size, start)
        return self.sample_with(n, config, Watchers(callback, on_step))

    def sample_with(self, n: int, config: SamplingConfig, watchers: Watchers | None = None) -> np.ndarray:
        """`sample` with its settings in one SamplingConfig."""
        watchers = watchers or Watchers()
        self._check(n, config)
        with self.around_sample(), _allocation_failure_as_error(n, config.batch_size):
            out = np.empty((n,) + self.sample_shape, np.float32)
            for lo in range(0, n, config.batch_size):
                idx = np.arange(config.start + lo, config.start + min(n, lo + config.batch_size), dtype=np.int64)
                chunk = self._chunk(idx, chunk_labels(config.label, idx, n, config.start), config)
                out[lo:lo + len(idx)] = self._sample_chunk(chunk, config, watchers)
            return self.normalization.decode(out)

    def sample_rows(self, seeds, indices, config: SamplingConfig, watchers: Watchers | None = None,
                    labels=None) -> np.ndarray:
        """Explicit rows as one call: row r is sample indices[r] of a `sample(seed=seeds[r])` call, with label
        labels[r] (-1 or None: none given), in data units (len(rows), *sample_shape).

        Each row equals the same sample of a call with its own seed alone, bit for bit: a server answers
        several requests with one batch this way. config.seed, label and start are not used; chunks of
        config.batch_size rows each make one on_step view."""
        watchers = watchers or Watchers()
        seeds, idx = np.asarray(seeds, np.uint64), np.asarray(indices, np.int64)
        rows = np.full(len(idx), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        if not (seeds.ndim == idx.ndim == rows.ndim == 1 and len(seeds) == len(idx) == len(rows)):
            raise GenccError(f"sample_rows takes one seed, index and label per row, got {len(seeds)} seeds, "
                             f"{len(idx)} indices and {len(rows)} labels")
        given = rows[rows >= 0]
        self._check(len(idx), replace(config, label=given if given.size else None))
        with self.around_sample(), _allocation_failure_as_error(len(idx), config.batch_size):
            out = np.empty((len(idx),) + self.sample_shape, np.float32)
            for lo in range(0, len(idx), config.batch_size):
                part = slice(lo, lo + config.batch_size)
                chunk = replace(self._chunk(idx[part], rows[part], config), seeds=seeds[part])
                out[part] = self._sample_chunk(chunk, config, watchers)
            return self.normalization.decode(out)

    def _check(self, n: int, config: SamplingConfig) -> None:
        """Refuse bad settings before any work, each error naming its value."""
        check_condition(self.kind, self.num_classes, config.label, config.guidance)
        _check_positive("n", n)
        _check_positive("batch-size", config.batch_size)
        _check_memory(n, config.batch_size, self.sample_shape, self.activation_bytes)

    def decode(self, x_latent: np.ndarray) -> np.ndarray:
        raise GenccError(f"decode applies to latent-diffusion models, not {self.kind}")

    def _chunk(self, idx: np.ndarray, labels: np.ndarray, config: SamplingConfig) -> _Chunk:
        """The chunk `idx` with its `labels` (-1: none given) and the guidance bound into the network calls."""
        raise NotImplementedError

    def _sample_chunk(self, chunk: _Chunk, config: SamplingConfig, watchers: Watchers) -> np.ndarray:
        """The chunk's samples in model space."""
        raise NotImplementedError


_HOST: Backend = Functions("numpy")   # the arrays of the unfused step: numpy on the host


@dataclass(eq=False, kw_only=True)
class DiffusionModel(Model):
    """A VP-SDE diffusion model: the reverse-SDE loop on states of `state_shape`, in model space."""

    kind: ClassVar[Kind] = Kind.DIFFUSION
    sde: VPSDE
    # (sampler, steps, spacing, options) -> plan: plans are pure functions of these and the model's sde.
    _plans: dict = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def _manifest_fields(cls, m) -> dict:
        return {"sde": m.sde, "num_classes": m.num_classes}

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.sample_shape

    def _check(self, n: int, config: SamplingConfig) -> None:
        super()._check(n, config)
        _check_positive("steps", config.steps)
        get_sampler(config.sampler)

    def _chunk(self, idx: np.ndarray, labels: np.ndarray, config: SamplingConfig) -> _Chunk:
        step = self.net.step if self.net.has("step") else None
        if not self.num_classes:
            return _Chunk(idx, eps=self.net.eps, step=step)
        y, w = label_rows(self.kind, labels, idx, self.num_classes), float(config.guidance or 0.0)
        if step is not None:
            y_dev = self.net.to_device(y)   # uploaded once per chunk: the labels stay on the device
            step = functools.partial(self.net.step, y=y_dev, w=w)
        return _Chunk(idx, eps=lambda x, t: self.net.eps(x, t, y, w), step=step)

    def _sample_chunk(self, chunk: _Chunk, config: SamplingConfig, watchers: Watchers) -> np.ndarray:
        return self._diffuse(chunk, config, watchers)

    def _diffuse(self, chunk: _Chunk, config: SamplingConfig, watchers: Watchers) -> np.ndarray:
        """The reverse-SDE loop on states of `state_shape`, in model space."""
        noise = SampleNoise(_seeds(config, chunk), chunk.idx, self.state_shape)
        if self._chained(config, watchers, len(chunk.idx)):
            return self._diffuse_chained(noise, config, chunk.step)
        fused = chunk.step is not None
        net = self.net if fused else _HOST
        # The unfused step is the one the samplers would build; naming it here lets LastEval watch it.
        assert chunk.eps is not None   # a diffusion chunk always has its eps (_chunk)
        step = chunk.step if fused else affine_step(chunk.eps)
        assert step is not None
        last = LastEval(step) if watchers.on_step else None
        x = get_sampler(config.sampler)(
            chunk.eps, net.to_device(noise.prior()), time_grid(self.sde, config.steps, config.grid_spacing), self.sde,
            self._bulk_noise(noise, fused) if config.sampler in STOCHASTIC else None,
            callback=self._watch(chunk, watchers, net, last), step_fn=last or step, **config.options)
        return _final(net.to_numpy(x))

    def _chained(self, config: SamplingConfig, watchers: Watchers, batch: int) -> bool:
        """Whether a chunk of `batch` samples runs several steps per compiled call: the backend has a chain
        that is the faster path at this batch, the sampler has a plan, and no one watches the steps (the chain
        reports only every chain_length-th). The chain has no label inputs: conditional models never take it."""
        return (self.net.has("chain") and self.net.chains(batch) and config.sampler in PLANS
                and not watchers.any and not self.num_classes)

    def _diffuse_chained(self, noise: SampleNoise, config: SamplingConfig, step: Callable | None) -> np.ndarray:
        net, length = self.net, self.net.chain_length
        assert step is not None   # a backend with a chain has the fused step too (its tail steps run on it)
        plan = self._plan(config)   # every chunk shares it
        # The few steps after the last full chain draw exactly their own noise, not a whole block.
        tail = [p.draw for p in plan[len(plan) // length * length:] if p.draw is not None]
        x = run_plan_chained(net.chain, length, step, net.to_device(noise.prior()), plan,
                             self._bulk_noise(noise, True, max(tail) - min(tail) + 1 if tail else 1),
                             lambda draws: net.chain_noise(noise, draws),
                             check=lambda k, x: _check_finite(net.to_numpy(x), f"step {k} (checked every "
                                                              f"{length} steps)"))
        return _final(net.to_numpy(x))

    def _plan(self, config: SamplingConfig) -> list[PlanStep]:
        key = (config.sampler, config.steps, config.grid_spacing, tuple(sorted(config.options.items())))
        if key not in self._plans:
            if len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = PLANS[config.sampler](time_grid(self.sde, config.steps, config.grid_spacing),
                                                     self.sde, **config.options)
        return self._plans[key]

    def _watch(self, chunk: _Chunk, watchers: Watchers, net: Backend, last: LastEval | None) -> Callable:
        """The samplers' per-step callback: the NaN/inf check every `check_every` steps, then the watchers."""
        every, callback, on_step = net.check_every, watchers.callback, watchers.on_step

        def watch(k: int, x) -> None:
            if callback or (k + 1) % every == 0:
                x = net.to_numpy(x)
                _check_finite(x, f"step {k}" if every == 1 else f"step {k} (checked every {every} steps)")
            if callback:
                callback(k, x)
            if on_step:
                assert last is not None   # made whenever on_step is (_diffuse)
                on_step(StepView(k, int(chunk.idx[0]), float(last.t), x, last.x_in, last.eps, self.sde,
                                 self.normalization, net.to_numpy))
        return watch

    def _bulk_noise(self, noise: SampleNoise, on_device: bool, block: int | None = None) -> _BulkNoise:
        """Step noise for the fused step (on the backend's device) or for the unfused one (numpy)."""
        if on_device and self.net.has("noise"):
            return _BulkNoise(noise, self.net.noise, block)
        to_device = self.net.to_device if on_device else np.asarray
        return _BulkNoise(noise, lambda noise, k0, k1: [to_device(z) for z in noise.steps(k0, k1)], block)


@dataclass(eq=False, kw_only=True)
class LatentDiffusionModel(DiffusionModel):
    """Diffusion on an autoencoder's scaled latents, then its decoder: x = decoder(x_L / latent_scale)."""

    kind: ClassVar[Kind] = Kind.LATENT_DIFFUSION
    latent_shape: tuple[int, ...]   # the diffusion state's shape
    latent_scale: float = 1.0       # the state is z * latent_scale

    @classmethod
    def _manifest_fields(cls, m) -> dict:
        return {"sde": m.sde, "latent_shape": m.latent_shape, "latent_scale": m.latent_scale}

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self.latent_shape

    def _sample_chunk(self, chunk: _Chunk, config: SamplingConfig, watchers: Watchers) -> np.ndarray:
        return self._decode_latent(self._diffuse(chunk, config, watchers))

    def decode(self, x_latent: np.ndarray) -> np.ndarray:
        """A latent-diffusion state (B, *latent_shape), e.g. a callback's intermediate x, as images in
        data units: for previews of the reverse process."""
        x = np.asarray(x_latent, dtype=np.float32)
        if x.shape[1:] != self.latent_shape:
            raise GenccError(f"decode takes states of shape (B, {', '.join(map(str, self.latent_shape))}), "
                             f"got {x.shape}")
        return self.normalization.decode(self._decode_latent(x))

    def _decode_latent(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(self.net.decode(x / np.float32(self.latent_scale)), dtype=np.float32)
        _check_finite(x, "the decoder output")
        return x


@dataclass(eq=False, kw_only=True)
class GanModel(Model):
    """A generator: one pass from the per-sample latent noise z to samples."""

    kind: ClassVar[Kind] = Kind.GAN
    latent_shape: tuple[int, ...]   # z's shape

    @classmethod
    def _manifest_fields(cls, m) -> dict:
        return {"latent_shape": m.latent_shape, "num_classes": m.num_classes}

    def _chunk(self, idx: np.ndarray, labels: np.ndarray, config: SamplingConfig) -> _Chunk:
        if not self.num_classes:
            return _Chunk(idx, generate=self.net.generate)
        y = label_rows(self.kind, labels, idx, self.num_classes)
        return _Chunk(idx, generate=lambda z: self.net.generate(z, y))

    def _sample_chunk(self, chunk: _Chunk, config: SamplingConfig, watchers: Watchers) -> np.ndarray:
        assert chunk.generate is not None   # a GAN chunk always has its generator (_chunk)
        x = np.asarray(self.net.to_numpy(chunk.generate(SampleNoise(_seeds(config, chunk), chunk.idx,
                                                                    self.latent_shape).prior())))
        _check_finite(x, "the generator output")
        if watchers.callback:
            watchers.callback(0, x)
        if watchers.on_step:
            watchers.on_step(StepView(0, int(chunk.idx[0]), None, x, normalization=self.normalization))
        return x


MODEL_CLASSES: dict[Kind, type[Model]] = {Kind.DIFFUSION: DiffusionModel, Kind.GAN: GanModel,
                                          Kind.LATENT_DIFFUSION: LatentDiffusionModel}


def _seeds(config: SamplingConfig, chunk: _Chunk):
    """The chunk's noise seed: the call's one seed, or its rows' own (sample_rows)."""
    return config.seed if chunk.seeds is None else chunk.seeds


def _final(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    _check_finite(x, "the final denoising step")
    return x


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
        return self.buf[k - self.k0]   # type: ignore[index]  # drawn just above when it was None


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
