"""Sampler noise drawn by an artifact's compiled kernel (compiler/noise_kernel.py), straight into TVM tensors.

The kernel makes exactly runtime/noise.py's numbers (the compiler's parity gate checks this before it
writes the artifact), so a run that draws its noise here gives the same samples as one that draws it
with numpy, only faster: at batch 1024 the numpy draw took about 150 us of a 1.3 ms MLP step.

Draw j (the noise of sampler step j) is Philox stream j + 1; stream 0 is the prior (runtime/noise.py).
Rows of several seeds (a server's merged requests) draw with numpy, the same numbers.
Every call writes into freshly allocated host memory, never into a shared buffer, so two threads sampling
from one model cannot overwrite each other's noise.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .noise import SampleNoise


def key_words(seed: int) -> np.ndarray:
    """The Philox key of a 64-bit seed: (lo, hi) uint32."""
    return np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)


def index_words(indices: np.ndarray) -> np.ndarray:
    """Sample indices (uint64) as (B, 2) uint32 (lo, hi) rows."""
    idx = np.asarray(indices, np.uint64)
    return np.stack([idx & np.uint64(0xFFFFFFFF), idx >> np.uint64(32)], axis=1).astype(np.uint32)


def aligned_empty(n: int, dtype=np.float32, align: int = 64) -> np.ndarray:
    """n elements starting at an `align`-byte boundary, as TVM's CPU kernels expect of their inputs."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n + align // item, dtype)
    skip = (-raw.ctypes.data % align) // item
    return raw[skip:skip + n]


class DeviceNoise:
    """The compiled `normals` kernel of one artifact, on the CPU."""

    def __init__(self, tvm, normals):
        self.tvm, self.normals = tvm, normals
        # (noise, key, index) of the last chunk: computed once per chunk
        self._words: tuple[SampleNoise | None, Any, Any] = (None, None, None)

    def _inputs(self, noise: SampleNoise):
        cached = self._words   # one tuple, replaced whole, so a reader in another thread sees a consistent one
        if cached[0] is not noise:
            cached = (noise, self._wrap(key_words(noise.seed)), self._wrap(index_words(noise.indices)))
            self._words = cached
        return cached[1], cached[2]

    def _wrap(self, a: np.ndarray):
        buf = aligned_empty(a.size, a.dtype)
        buf[...] = a.reshape(-1)
        return self.tvm.runtime.from_dlpack(buf.reshape(a.shape))

    def steps(self, noise: SampleNoise, k0: int, k1: int) -> list:
        """The draws of steps k0 .. k1 - 1 as k1 - k0 tensors (B, *shape), each 64-byte aligned in one block."""
        if noise.row_seeds is not None:   # the kernel takes one key per call: rows of several seeds draw on the host
            return host_steps(self.tvm, noise, k0, k1)
        block, stride, rows = _step_rows(k1 - k0, noise)
        key, index = self._inputs(noise)
        streams = self._wrap(np.arange(k0 + 1, k1 + 1, dtype=np.uint32))
        n = math.prod(noise.shape)
        self.normals(key, streams, index, self.tvm.runtime.from_dlpack(block), n, stride, n)
        return _per_step(self.tvm, rows, noise)

    def chain_block(self, noise: SampleNoise, draws: list) -> object:
        """The (B, L, *shape) noise input of a chained call: row k is draw draws[k], or zeros where None."""
        if noise.row_seeds is not None:   # one key per call, as in steps
            return host_chain_block(self.tvm, noise, draws)
        block = _chain_block(noise, len(draws))
        if any(d is not None for d in draws):
            key, index = self._inputs(noise)
            streams = self._wrap(np.array([0 if d is None else d + 1 for d in draws], np.uint32))
            n = math.prod(noise.shape)
            self.normals(key, streams, index, self.tvm.runtime.from_dlpack(block.reshape(-1)), n, n, len(draws) * n)
        for k, d in enumerate(draws):
            if d is None:   # a step that draws no noise has coefficient 0 on it; zeros keep 0 * z exact
                block[:, k] = 0.0
        return self.tvm.runtime.from_dlpack(block)


def host_chain_block(tvm, noise: SampleNoise, draws: list) -> object:
    """chain_block's numbers from numpy, for an artifact compiled before it carried the kernel."""
    block = _chain_block(noise, len(draws))
    taken = [d for d in draws if d is not None]
    zs = noise.steps(min(taken), max(taken) + 1) if taken else None
    for k, d in enumerate(draws):
        block[:, k] = 0.0 if d is None or zs is None else zs[d - min(taken)]
    return tvm.runtime.from_dlpack(block)


def host_steps(tvm, noise: SampleNoise, k0: int, k1: int) -> list:
    """steps' numbers from numpy: one aligned copy of the block, sliced into per-step tensors."""
    _, _, rows = _step_rows(k1 - k0, noise)
    rows[...] = noise.steps(k0, k1).reshape(rows.shape)
    return _per_step(tvm, rows, noise)


def _step_rows(k: int, noise: SampleNoise) -> tuple[np.ndarray, int, np.ndarray]:
    """Memory for k steps' noise, one row per step padded to 64 bytes so every step's tensor starts
    aligned: (the flat block, the row stride, the (k, B * n) view of the rows' used part)."""
    per = len(noise.indices) * math.prod(noise.shape)
    stride = -(-per // 16) * 16
    block = aligned_empty(k * stride)
    return block, stride, block.reshape(k, stride)[:, :per]


def _per_step(tvm, rows: np.ndarray, noise: SampleNoise) -> list:
    return [tvm.runtime.from_dlpack(row.reshape(len(noise.indices), *noise.shape)) for row in rows]


def _chain_block(noise: SampleNoise, length: int) -> np.ndarray:
    """Aligned memory for a chained call's noise, batch-first: (B, L, *shape)."""
    batch = len(noise.indices)
    return aligned_empty(batch * length * math.prod(noise.shape)).reshape(batch, length, *noise.shape)
