"""Per-sample counter-based Gaussian noise: Philox4x32-10 (Salmon et al., SC'11) plus Box-Muller."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import GenccError

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox round multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # Weyl key increments (golden ratio, sqrt 3)
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)


def _philox_words(c0, c1, c2, c3, k0, k1, rounds: int) -> tuple[np.ndarray, ...]:
    """Philox on four broadcastable uint64 word arrays holding 32-bit values; returns four uint64 arrays."""
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        # A 32x32-bit product fits in uint64, so mulhilo is a multiply, a shift and a mask.
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1 = (p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32
        c2, c3 = (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32
    # Which inputs reach which output word depends on the round count, so give all four the full shape.
    return np.broadcast_arrays(c0, c1, c2, c3)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Random123's Philox4x32-R block cipher: uint32 counter (..., 4) and key (..., 2) -> uint32 (..., 4)."""
    counter, key = np.asarray(counter), np.asarray(key)
    if counter.dtype != np.uint32 or counter.shape[-1:] != (4,):
        raise GenccError(f"philox4x32 counter must be uint32 (..., 4), got {counter.dtype} {counter.shape}")
    if key.dtype != np.uint32 or key.shape[-1:] != (2,):
        raise GenccError(f"philox4x32 key must be uint32 (..., 2), got {key.dtype} {key.shape}")
    c, k = counter.astype(np.uint64), key.astype(np.uint64)
    words = _philox_words(c[..., 0], c[..., 1], c[..., 2], c[..., 3], k[..., 0], k[..., 1], rounds)
    return np.stack(words, axis=-1).astype(np.uint32)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:
        raise GenccError(f"noise seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _check_seeds(seed, rows: int) -> tuple[int, np.ndarray | None]:
    """(the seed, None) for one seed, or for a sequence whose seeds are all equal (the one-seed path,
    unchanged); (0, uint64 per-row seeds) for a sequence of different seeds, one per row."""
    if isinstance(seed, numbers.Integral) or np.ndim(seed) == 0:
        return _check_seed(seed), None
    seeds = [_check_seed(s) for s in seed]
    if len(seeds) != rows:
        raise GenccError(f"noise seeds must give one seed per index: {len(seeds)} seeds for {rows} indices")
    if len(set(seeds)) <= 1:
        return (seeds[0] if seeds else 0), None
    return 0, np.array(seeds, dtype=np.uint64)


def _check_indices(indices) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
        raise GenccError(f"noise indices must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    if arr.size and arr.min() < 0:
        raise GenccError(f"noise indices must be non-negative, got {arr.min()}")
    return arr.astype(np.uint64)


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    if not all(isinstance(d, numbers.Integral) and d >= 0 for d in shape):
        raise GenccError(f"noise shape must be non-negative integers, got {shape}")
    return tuple(int(d) for d in shape)


def _check_stream(stream: int, what: str = "noise stream") -> int:
    if isinstance(stream, bool) or not isinstance(stream, numbers.Integral) or not 0 <= int(stream) < 2**32:
        raise GenccError(f"{what} must be an integer in [0, 2**32), got {stream!r}")
    return int(stream)


_CHUNK_BLOCKS = 1 << 14  # Philox blocks per pass: keeps the ~20 temporaries cache-sized


def _normals(seed: int | np.ndarray, indices: np.ndarray, streams: np.ndarray, shape: tuple[int, ...],
             dtype) -> np.ndarray:
    """Validated inputs -> normals of shape (len(streams), len(indices), *shape); `seed` is one seed, or a
    uint64 array of one seed per index (rows of several requests sampled as one batch)."""
    n, (s, b) = math.prod(shape), (len(streams), len(indices))
    blocks = -(-n // 4)  # each Philox call yields four normals
    row_stream, row_index = np.repeat(streams, b), np.tile(indices, s)
    row_seed = np.tile(seed, s) if isinstance(seed, np.ndarray) else None
    out = np.empty((s * b, n), dtype=dtype)
    # Passes over a few rows at a time run faster than one pass over everything; rows never mix.
    rows = max(1, _CHUNK_BLOCKS // max(blocks, 1))
    for a in range(0, s * b, rows):
        key = seed if row_seed is None else row_seed[a:a + rows]
        out[a:a + rows] = _row_normals(key, row_stream[a:a + rows], row_index[a:a + rows], blocks)[:, :n]
    return out.reshape(s, b, *shape)


def _row_normals(seed: int | np.ndarray, stream: np.ndarray, index: np.ndarray, blocks: int) -> np.ndarray:
    """float64 normals (rows, 4 * blocks) for uint64 per-row stream and sample index (and seed, if an array)."""
    # Counter = (block j, stream, index lo, index hi): element j of a row never depends on the batch.
    c0 = np.arange(blocks, dtype=np.uint64)[None, :]
    c1, c2, c3 = stream[:, None], (index & _MASK32)[:, None], (index >> _SHIFT32)[:, None]
    if isinstance(seed, np.ndarray):   # per-row keys: the same words, each row's from its own seed
        k0, k1 = (seed & _MASK32)[:, None], (seed >> _SHIFT32)[:, None]
    else:
        k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    x = _philox_words(c0, c1, c2, c3, k0, k1, rounds=10)
    # (x + 0.5) / 2^32 lies strictly inside (0, 1), so log never sees 0 and no value is special-cased.
    u = [(w.astype(np.float64) + 0.5) * 2.0**-32 for w in x]
    r0, r1 = np.sqrt(-2.0 * np.log(u[0])), np.sqrt(-2.0 * np.log(u[2]))
    t0, t1 = 2.0 * np.pi * u[1], 2.0 * np.pi * u[3]
    # Box-Muller on (x0, x1) and (x2, x3); block j gives normals 4j .. 4j+3 in this order.
    z = np.stack([r0 * np.cos(t0), r0 * np.sin(t0), r1 * np.cos(t1), r1 * np.sin(t1)], axis=-1)
    return z.reshape(len(index), 4 * blocks)


def normal_noise(seed: int, indices: np.ndarray, stream: int, shape: tuple[int, ...],
                 dtype=np.float32) -> np.ndarray:
    """Standard normals of shape (len(indices), *shape); row r depends only on (seed, indices[r], stream).

    Element e of a row is normal e % 4 of Philox block e // 4, so a smaller shape reads a prefix of a row.
    """
    streams = np.array([_check_stream(stream)], dtype=np.uint64)
    return _normals(_check_seed(seed), _check_indices(indices), streams, _check_shape(shape), dtype)[0]


class SampleNoise:
    """The noise contract every backend uses: sample i's noise depends only on (seed, i, stream).

    Stream 0 is the prior draw (the diffusion starting point, or a GAN latent) and stream k + 1 is the
    noise for sampler step k, so any batch size, chunking or backend reproduces the same sample i.
    """

    def __init__(self, seed, indices: np.ndarray, shape: tuple[int, ...], dtype=np.float32):
        """`seed`: one seed for every row, or a sequence of one seed per index (row r is then sample
        indices[r] of seed seed[r], exactly the row a call with that one seed draws)."""
        self.indices = _check_indices(indices)
        self.seed, self.row_seeds = _check_seeds(seed, len(self.indices))
        self.shape = _check_shape(shape)
        self.dtype = dtype

    def prior(self) -> np.ndarray:
        """Starting point, shape (B, *shape)."""
        return self._streams(0, 1)[0]

    def step(self, k: int) -> np.ndarray:
        """Noise for sampler step k, shape (B, *shape)."""
        return self.steps(k, k + 1)[0]

    def steps(self, k0: int, k1: int) -> np.ndarray:
        """Noise for steps k0 .. k1 - 1 in one vectorised call, shape (k1 - k0, B, *shape)."""
        ints = all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in (k0, k1))
        if not (ints and 0 <= k0 <= k1 < 2**32):
            raise GenccError(f"noise steps need 0 <= k0 <= k1 < 2**32, got k0={k0}, k1={k1}")
        return self._streams(k0 + 1, k1 + 1)

    def _streams(self, lo: int, hi: int) -> np.ndarray:
        streams = np.arange(lo, hi, dtype=np.uint64)
        seed = self.seed if self.row_seeds is None else self.row_seeds
        return _normals(seed, self.indices, streams, self.shape, self.dtype)
