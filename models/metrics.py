"""Sample-quality metrics that need only numpy: sliced Wasserstein-1, RBF MMD^2, Fréchet distance, and
class coverage.

MMD is the unbiased estimator of Gretton et al. (2012, eq. 3); the Fréchet distance is the FID formula
of Heusel et al. (2017) applied to whatever feature space the caller provides.
"""
from __future__ import annotations

import numpy as np

from gencc.runtime.errors import GenccError

MMD_MAX_POINTS = 2000     # per set: the kernel matrices are O(n^2), so 2000 keeps one call under a second
BANDWIDTH_POINTS = 1000   # pooled points for the median heuristic: its median is stable well before this
CONFIDENT = 0.9           # a classifier probability at or above this counts as a confident prediction


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 256, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projections.

    Both sets are flattened to (N, D); sets of unequal size are compared through matched quantiles.
    """
    a, b = _paired_sets(a, b, "sliced Wasserstein")
    dirs = np.random.default_rng(seed).standard_normal((a.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
    if len(pa) != len(pb):
        q = (np.arange(max(len(pa), len(pb))) + 0.5) / max(len(pa), len(pb))
        pa, pb = np.quantile(pa, q, axis=0), np.quantile(pb, q, axis=0)
    return float(np.abs(pa - pb).mean())


def mmd_rbf(a: np.ndarray, b: np.ndarray, bandwidth: float | None = None, seed: int = 0) -> float:
    """Unbiased MMD^2 between two sets under k(x, y) = exp(-|x - y|^2 / (2 h^2)).

    Each set is flattened to (N, D) and, when larger than 2000 points, replaced by a subsample of 2000
    drawn with `seed`. The default bandwidth h is the median heuristic: the median pairwise distance
    among at most 1000 points drawn (with `seed`) from the pooled subsamples. The estimate can be
    slightly negative when the sets come from one distribution; two identical sets of n points give
    -2 (1 - mean off-diagonal kernel) / n.
    """
    a, b = _paired_sets(a, b, "MMD")
    if len(a) < 2 or len(b) < 2:
        raise GenccError(f"MMD needs at least 2 points per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, MMD_MAX_POINTS, rng), _subsample(b, MMD_MAX_POINTS, rng)
    if bandwidth is None:
        bandwidth = median_distance(np.concatenate([a, b]), rng)
    if not bandwidth > 0:
        raise GenccError(f"MMD bandwidth must be positive, got {bandwidth}")
    gamma = 1.0 / (2.0 * bandwidth ** 2)
    kaa, kbb = np.exp(-gamma * _sq_dists(a, a)), np.exp(-gamma * _sq_dists(b, b))
    kab = np.exp(-gamma * _sq_dists(a, b))
    n, m = len(a), len(b)
    # Unbiased: the within-set means leave out the diagonal k(x, x) = 1.
    within = (kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
    return float(within - 2.0 * kab.mean())


def median_distance(x: np.ndarray, rng: np.random.Generator) -> float:
    """Median of the pairwise distances i < j among at most 1000 points of x drawn with rng."""
    x = _subsample(x, BANDWIDTH_POINTS, rng)
    d = np.sqrt(_sq_dists(x, x)[np.triu_indices(len(x), k=1)])
    h = float(np.median(d))
    if h <= 0:
        raise GenccError("MMD median-heuristic bandwidth is 0 (over half the sampled pairs coincide); "
                         "pass an explicit bandwidth")
    return h


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + Tr(Ca + Cb - 2 (Ca Cb)^(1/2)) between Gaussians fitted to two feature sets.

    Tr((Ca Cb)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix Ca^(1/2) Cb Ca^(1/2), which has the same spectrum as Ca Cb; unlike scipy.linalg.sqrtm of the
    non-symmetric Ca Cb, this never produces imaginary parts. Rounding can leave the result a hair
    below 0 for equal inputs, so it is clipped at 0.
    """
    a, b = _paired_sets(feat_a, feat_b, "Fréchet distance")
    if len(a) < 2 or len(b) < 2:
        raise GenccError(f"Fréchet distance needs at least 2 feature vectors per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    tr_sqrt = np.sqrt(np.clip(cross, 0.0, None)).sum()
    fd = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt
    return float(max(fd, 0.0))


def class_coverage(probs: np.ndarray) -> dict:
    """How evenly and confidently a classifier labels a set: a guard against mode collapse.

    entropy:   entropy of the histogram of argmax classes divided by log K (1 = every class equally
               often, 0 = one class only).
    confident: fraction of rows whose top probability is at least 0.9.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise GenccError(f"class coverage needs probabilities of shape (N, K) with N >= 1, K >= 2; "
                         f"got {probs.shape}")
    counts = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
    p = counts[counts > 0] / len(probs)
    entropy = float((p * np.log(1.0 / p)).sum() / np.log(probs.shape[1]))
    return {"entropy": entropy, "confident": float((probs.max(axis=1) >= CONFIDENT).mean())}


def _paired_sets(a: np.ndarray, b: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both sets to float64 (N, D); a 1-D array is N scalars."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    b = b.reshape(len(b), -1) if b.ndim else b.reshape(1, 1)
    if a.shape[1] != b.shape[1] or len(a) == 0 or len(b) == 0:
        raise GenccError(f"{metric} needs two non-empty sets of one dimension, got {a.shape} and {b.shape}")
    return a, b


def _subsample(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= k else x[rng.choice(len(x), size=k, replace=False)]


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pairwise squared distances; |x|^2 + |y|^2 - 2 x.y can round below 0, hence the clip."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.clip(d, 0.0, None)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix; rounding-level negative eigenvalues become 0."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
