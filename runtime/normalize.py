"""Map data to model space and back: per-dimension standardization for vectors, [-1, 1] for images."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GenccError
from .jsonfile import one_line, short


@dataclass(frozen=True)
class Normalization:
    """model = (data - shift) / scale; `shift` and `scale` broadcast against one sample's shape."""

    shift: tuple[float, ...]
    scale: tuple[float, ...]
    sample_shape: tuple[int, ...]

    @classmethod
    def fit(cls, data: np.ndarray, kind: str) -> Normalization:
        """Vectors: per-dimension mean/std. Images: one affine map of the value range onto [-1, 1]."""
        shape = tuple(int(s) for s in data.shape[1:])
        if kind == "vector":
            mean = data.mean(axis=0, dtype=np.float64)
            std = data.std(axis=0, dtype=np.float64)
            std = np.where(std > 1e-8, std, 1.0)   # a constant column would divide by zero
            return cls(tuple(mean.tolist()), tuple(std.tolist()), shape)
        if kind == "image":
            lo, hi = float(data.min()), float(data.max())
            lo, hi = min(lo, 0.0), max(hi, 1.0)    # images in [0, 1] map exactly; wider ranges still fit
            return cls(((hi + lo) / 2,), ((hi - lo) / 2,), shape)
        raise GenccError(f"unknown data kind {kind!r}; expected 'vector' or 'image'")

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        shift = np.asarray(self.shift, np.float32)
        scale = np.asarray(self.scale, np.float32)
        if shift.size > 1:   # per-dimension vectors
            return shift.reshape(self.sample_shape), scale.reshape(self.sample_shape)
        return shift.reshape(()), scale.reshape(())

    def encode(self, data: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays()
        return ((data - shift) / scale).astype(np.float32)

    def decode(self, x: np.ndarray) -> np.ndarray:
        shift, scale = self._arrays()
        return (x * scale + shift).astype(np.float32)

    def to_dict(self) -> dict:
        return {"shift": list(self.shift), "scale": list(self.scale), "sample_shape": list(self.sample_shape)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        try:
            norm = cls(tuple(float(v) for v in d["shift"]), tuple(float(v) for v in d["scale"]),
                       tuple(int(v) for v in d["sample_shape"]))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise GenccError(f"malformed normalization record {short(d)}: {one_line(e)}") from None
        if not (0 < len(norm.sample_shape) <= 4 and all(0 < s <= 1 << 16 for s in norm.sample_shape)):
            raise GenccError(f"normalization sample shape {short(norm.sample_shape)} is not 1-4 positive sizes")
        n = math.prod(norm.sample_shape)
        if len(norm.shift) not in (1, n) or len(norm.scale) != len(norm.shift):
            raise GenccError(f"normalization has {len(norm.shift)} shifts for sample shape {norm.sample_shape}")
        if not all(math.isfinite(s) for s in norm.shift):
            raise GenccError(f"normalization shift must be finite, got {short(norm.shift)}")
        if any(not math.isfinite(s) or s <= 0 for s in norm.scale):
            raise GenccError(f"normalization scale must be positive and finite, got {short(norm.scale)}")
        return norm
