"""The shipped shapes classifier and the shapes scores of gencc eval: real images score at the floor,
invalid images and a collapsed generator do not."""
from __future__ import annotations

import numpy as np
import pytest

from gencc.models.data import load_dataset
from gencc.models.evaluate import evaluate
from gencc.models.shapes_classifier import (
    COMMAND,
    ShapeClassifierConfig,
    held_out_accuracy,
    load_classifier,
    negatives,
    probs,
    read_meta,
    shape_coverage,
    valid_shapes,
)
from gencc.runtime.errors import GenccError


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_shipped_classifier_is_accurate_and_described(classifier):
    meta = read_meta()
    assert meta["command"] == COMMAND and meta["seed"] == 0
    acc = held_out_accuracy(classifier, meta["seed"], ShapeClassifierConfig(**meta["config"]))
    assert acc == meta["test_accuracy"]   # the shipped weights are the ones the metadata describes
    assert acc["shapes_test"] >= 0.98 and acc["negatives_test"] >= 0.95
    with pytest.raises(GenccError, match=r"\(N, 3, 32, 32\)"):
        probs(np.zeros((2, 1, 8, 8), np.float32), classifier)


def test_valid_share_and_coverage(classifier):
    test = load_dataset("shapes", split="test", n=300)
    p = probs(test.data, classifier)
    assert valid_shapes(p).mean() > 0.95 and shape_coverage(p) > 0.95
    neg = negatives(test.data, test.labels, 300, seed=7, noise_std=0.35)
    assert valid_shapes(probs(neg, classifier)).mean() < 0.15
    circles = test.data[test.labels == 0]
    assert shape_coverage(probs(circles, classifier)) < 0.2   # one shape type only: collapsed


def test_evaluate_scores_real_images_at_the_floor_and_noise_far_from_it():
    real = evaluate(load_dataset("shapes", split="train", n=400, seed=5).data, "shapes", n_ref=400)
    m = real["metrics"]
    assert m["valid_shape_fraction"]["value"] > 0.95 and m["shape_coverage"]["value"] > 0.95
    # Two real sets of 400 differ by sampling noise alone: the estimate at n=400 in 64 dimensions varies
    # a few-fold between seeds, far below what a wrong distribution scores.
    assert m["frechet_distance"]["value"] < 10 * m["frechet_distance"]["floor"]
    noise = np.random.default_rng(0).uniform(0, 1, (400, 3, 32, 32)).astype(np.float32)
    bad = evaluate(noise, "shapes", n_ref=400)["metrics"]
    assert bad["valid_shape_fraction"]["value"] < 0.2
    assert bad["frechet_distance"]["value"] > 10 * m["frechet_distance"]["value"]
    assert set(real["label_histogram"]["samples"]) == {"circle", "square", "triangle", "invalid"}
