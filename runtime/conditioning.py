"""Class labels and classifier-free guidance on the runtime side (numpy only).

Networks read labels as float one-hot rows: K + 1 columns for a conditional diffusion model (the last,
index K, is the null class learned by label dropout), K columns for a conditional GAN. The compiled
diffusion step takes them with a guidance scale w of shape (1,) and returns the guided eps

    eps = (1 + w) eps(x, t, y) - w eps(x, t, null)        (Ho & Salimans 2022, eq. 6)

so w = 0 samples the plain conditional model. Without a label, a diffusion model samples with the
null class (the unconditional model it learned alongside); a GAN, which has no null class, gives
sample i the label i mod K, so any run covers every class evenly and sample i still depends only on i.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import GenccError
from .kinds import Kind


def one_hot(labels: np.ndarray, width: int) -> np.ndarray:
    """int labels (B,) -> float32 (B, width)."""
    out = np.zeros((len(labels), width), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    return out


def null_labels(batch: int, num_classes: int) -> np.ndarray:
    """The null class's one-hot rows for a diffusion model, (batch, num_classes + 1)."""
    return one_hot(np.full(batch, num_classes, np.int64), num_classes + 1)


def check_condition(kind: Kind, num_classes: int, label, guidance) -> None:
    """Refuse a label or guidance the model cannot take, naming the value."""
    if not num_classes:
        for name, v in (("label", label), ("guidance", guidance)):
            if v is not None:
                raise GenccError(f"{name} {_show(v)} given, but this {kind} model is unconditional "
                                 "(train it with --conditional on labelled data)")
        return
    if guidance is not None:
        if kind != Kind.DIFFUSION:
            raise GenccError(f"guidance {_show(guidance)} applies only to diffusion models; this is a {kind}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.floating, np.integer)) \
                or not math.isfinite(guidance) or guidance < 0:
            raise GenccError(f"guidance must be a finite number >= 0, got {_show(guidance)}")
    if label is not None:
        labels = np.asarray(label)
        if labels.dtype.kind not in "iu" or labels.ndim > 1 or labels.size == 0:
            raise GenccError(f"label must be an integer class or a list of them, got {_show(label)}")
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise GenccError(f"label {int(bad[0])} is out of range: this model knows classes 0..{num_classes - 1}")


def chunk_labels(label, idx: np.ndarray, n_total: int, start: int) -> np.ndarray:
    """Labels of the samples `idx` (absolute indices, the call drew start..start+n_total-1).

    An int labels every sample; a sequence gives one label per sample of the call. None: -1, meaning
    the null class for diffusion, and i mod K is substituted for GANs by `label_rows`.
    """
    if label is None:
        return np.full(len(idx), -1, np.int64)
    labels = np.asarray(label, np.int64)
    if labels.ndim == 0:
        return np.full(len(idx), int(labels), np.int64)
    if len(labels) != n_total:
        raise GenccError(f"{len(labels)} labels given for {n_total} samples; give one label, or one per sample")
    return labels[idx - start]


def label_rows(kind: Kind, labels: np.ndarray, idx: np.ndarray, num_classes: int) -> np.ndarray:
    """The one-hot rows a network of `kind` reads for `labels` (-1: no label given)."""
    if kind == Kind.DIFFUSION:
        return one_hot(np.where(labels < 0, num_classes, labels), num_classes + 1)
    return one_hot(np.where(labels < 0, idx % num_classes, labels), num_classes)


def _show(v) -> str:
    s = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return s if len(s) <= 60 else s[:57] + "..."
