"""Scores for images of the built-in `shapes` set, from the shipped shapes classifier (models/shape_classifier.py):
the share of samples that hold a valid shape, the coverage of the three shape types, and the Fréchet
distance in the classifier's feature space, each beside the same score of real training images."""
from __future__ import annotations

import numpy as np

from .metrics import frechet_distance

from .shape_classifier import INVALID, VALID_PROB, features, load_classifier, probs, read_meta
from .shapes import CLASSES


def valid_shapes(p: np.ndarray) -> np.ndarray:
    """Rows whose top class is a shape (not "invalid") with probability >= 0.5."""
    return (p.argmax(1) != INVALID) & (p.max(1) >= VALID_PROB)


def shape_coverage(p: np.ndarray) -> float:
    """Entropy of the shape-type histogram of the valid rows, over log 3: 1 = every type equally often."""
    counts = np.bincount(p[valid_shapes(p)].argmax(1), minlength=len(CLASSES))[:len(CLASSES)]
    if counts.sum() == 0:
        return 0.0
    q = counts[counts > 0] / counts.sum()
    return float((q * np.log(1.0 / q)).sum() / np.log(len(CLASSES)))


def shapes_metrics(samples: np.ndarray, held_out: np.ndarray, train: np.ndarray, result: dict) -> dict:
    """{name: {"value", "floor", "better"}}; adds a label histogram and a note to `result`."""
    model = load_classifier()
    p_samples, p_train = probs(samples, model), probs(train, model)
    ref_features = features(held_out, model)
    names = [*CLASSES, "invalid"]
    result["label_histogram"] = {
        who: dict(zip(names, np.bincount(p.argmax(1), minlength=len(names)).tolist()))
        for who, p in (("samples", p_samples), ("reference", probs(held_out, model)))}
    acc = read_meta()["test_accuracy"]
    result["notes"].append(
        f"valid_shape_fraction, shape_coverage and frechet_distance use the shipped shapes classifier "
        f"({acc['shapes_test']:.3f} test accuracy on shapes, {acc['negatives_test']:.3f} on invalid images); "
        "a valid shape is a shape class on top at probability >= 0.5")

    def entry(value, floor, better):
        return {"value": float(value), "floor": float(floor), "better": better}

    return {"frechet_distance": entry(frechet_distance(features(samples, model), ref_features),
                                      frechet_distance(features(train, model), ref_features), "lower"),
            "valid_shape_fraction": entry(valid_shapes(p_samples).mean(), valid_shapes(p_train).mean(), "higher"),
            "shape_coverage": entry(shape_coverage(p_samples), shape_coverage(p_train), "higher")}
