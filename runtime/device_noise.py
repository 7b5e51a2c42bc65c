"""Sampler noise drawn by an artifact's compiled kernel (compiler/noise_kernel.py), straight into TVM tensors.

The kernel makes exactly runtime/noise.py's numbers (the compiler's parity gate checks this before it
writes the artifact), so a run that draws its noise here gives the same samples as one that draws it
with numpy, only faster: at batch 1024 the numpy draw took about 150 us of a 1.3 ms MLP step.

Draw j (the noise of sampler step j) is Philox stream j + 1; stream 0 is the prior (runtime/noise.py).
Every call writes into freshly allocated host memory, never into a shared buffer, so two threads sampling
from one model cannot overwrite each other's noise.
"""
from __future__ import annotations

import math

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
        self._words = (None, None, None)   # (noise, key, index) of the last chunk: computed once per chunk

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
        per, n = len(noise.indices) * math.prod(noise.shape), math.prod(noise.shape)
        stride = -(-per // 16) * 16   # pad each step's row to 64 bytes so every tensor starts aligned
        block = aligned_empty((k1 - k0) * stride)
        key, index = self._inputs(noise)
        streams = self._wrap(np.arange(k0 + 1, k1 + 1, dtype=np.uint32))
        self.normals(key, streams, index, self.tvm.runtime.from_dlpack(block), n, stride, n)
        rows = block.reshape(k1 - k0, stride)[:, :per]
        return [self.tvm.runtime.from_dlpack(rows[i].reshape(len(noise.indices), *noise.shape))
                for i in range(k1 - k0)]

    def chain_block(self, noise: SampleNoise, draws: list) -> object:
        """The (B, L, *shape) noise input of a chained call: row k is draw draws[k], or zeros where None."""
        batch, n, length = len(noise.indices), math.prod(noise.shape), len(draws)
        block = aligned_empty(batch * length * n)
        view = block.reshape(batch, length, n)
        if any(d is not None for d in draws):
            key, index = self._inputs(noise)
            streams = self._wrap(np.array([0 if d is None else d + 1 for d in draws], np.uint32))
            self.normals(key, streams, index, self.tvm.runtime.from_dlpack(block), n, n, length * n)
        for k, d in enumerate(draws):
            if d is None:   # a step that draws no noise has coefficient 0 on it; zeros keep 0 * z exact
                view[:, k] = 0.0
        return self.tvm.runtime.from_dlpack(block.reshape(batch, length, *noise.shape))


def host_chain_block(tvm, noise: SampleNoise, draws: list) -> object:
    """chain_block's numbers from numpy, for an artifact compiled before it carried the kernel."""
    batch, length = len(noise.indices), len(draws)
    block = aligned_empty(batch * length * math.prod(noise.shape)).reshape(batch, length, *noise.shape)
    taken = [d for d in draws if d is not None]
    zs = noise.steps(min(taken), max(taken) + 1) if taken else None
    for k, d in enumerate(draws):
        block[:, k] = 0.0 if d is None else zs[d - min(taken)]
    return tvm.runtime.from_dlpack(block)


def host_steps(tvm, noise: SampleNoise, k0: int, k1: int) -> list:
    """steps' numbers from numpy: one aligned copy of the block, sliced into per-step tensors."""
    buf = noise.steps(k0, k1)
    per = math.prod(buf.shape[1:])
    stride = -(-per // 16) * 16
    rows = aligned_empty(len(buf) * stride).reshape(len(buf), stride)[:, :per]
    rows[...] = buf.reshape(len(buf), per)
    return [tvm.runtime.from_dlpack(rows[i].reshape(buf.shape[1:])) for i in range(len(buf))]
