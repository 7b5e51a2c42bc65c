"""Sample-quality metrics that need only numpy: the sliced Wasserstein-1 distance."""
from __future__ import annotations

import numpy as np

from .errors import GenccError


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projections.

    Both sets are flattened to (N, D); sets of unequal size are compared through matched quantiles.
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise GenccError(f"sliced Wasserstein needs two non-empty sets of one dimension, got {a.shape} and {b.shape}")
    dirs = np.random.default_rng(seed).standard_normal((a.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    if len(pa) != len(pb):
        q = (np.arange(max(len(pa), len(pb))) + 0.5) / max(len(pa), len(pb))
        pa, pb = np.quantile(pa, q, axis=0), np.quantile(pb, q, axis=0)
    return float(np.abs(pa - pb).mean())
