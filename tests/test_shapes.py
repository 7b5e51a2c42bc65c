"""The built-in `shapes` set: determinism, labels, geometry per the recipe in models/shapes.py, splits."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gencc.models.data import load_dataset
from gencc.models.shapes import CLASSES, make_shapes
from gencc.runtime.errors import GenccError


def test_deterministic_and_prefix_stable() -> None:
    x, y = make_shapes(40, seed=3)
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    x2, y2 = make_shapes(40, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # Image i depends on (seed, i) only: a shorter set is a prefix of a longer one.
    np.testing.assert_array_equal(make_shapes(7, seed=3)[0], x[:7])
    assert not np.allclose(make_shapes(40, seed=4)[0], x)


def test_values_labels_and_background() -> None:
    x, y = make_shapes(300, seed=0)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(len(CLASSES)))
    assert min(np.bincount(y)) > 60   # roughly uniform over the three classes
    # The shape lies inside the frame, so the border rows are plain background: one grey level.
    border = np.concatenate([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], axis=2)
    np.testing.assert_allclose(border, border[:, :1, :1].repeat(3, 1).repeat(border.shape[2], 2), atol=1e-6)


def test_area_matches_the_shape() -> None:
    # Anti-aliased coverage sums to the shape's area: pi r^2, (2r)^2, and 3 sqrt(3)/4 r^2 for the
    # triangle of circumradius r. The covered fraction is read from the colour's distance to the background.
    x, y = make_shapes(60, seed=1)
    for img, label in zip(x, y, strict=True):
        bg = img[:, 0, 0][:, None, None]
        colour_channel = np.argmax(np.abs(img - bg).reshape(3, -1).max(axis=1))
        diff = (img[colour_channel] - bg[colour_channel, 0, 0])
        area = diff.sum() / diff.flat[np.abs(diff).argmax()]
        r = _radius_from_area(area, label)
        assert 4.5 < r < 10.5, (label, area)


def _radius_from_area(area: float, label: int) -> float:
    return math.sqrt(area / (math.pi, 4.0, 3 * math.sqrt(3) / 4)[label])


def test_classes_differ_in_shape() -> None:
    # A circle fills pi/4 of its bounding box, a square all of it, a triangle about half.
    x, y = make_shapes(150, seed=2)
    fill = {k: [] for k in range(3)}
    for img, label in zip(x, y, strict=True):
        bg = img[:, 0, 0][:, None, None]
        mask = np.abs(img - bg).max(axis=0) > 0.05
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        fill[int(label)].append(mask.sum() / box)
    means = [np.mean(fill[k]) for k in range(3)]
    assert means[1] > 0.9 and 0.7 < means[0] < 0.85 and means[2] < 0.65, means


def test_dataset_splits_and_errors() -> None:
    train = load_dataset("shapes", n=20)
    test = load_dataset("shapes", n=20, split="test")
    assert train.kind == "image" and train.name == "shapes" and train.labels.shape == (20,)
    assert not np.allclose(train.data, test.data)
    np.testing.assert_array_equal(train.data, make_shapes(20, seed=0)[0])
    assert load_dataset("shapes", n=5, image_size=32, channels=3).data.shape == (5, 3, 32, 32)
    with pytest.raises(GenccError, match="channels=1"):
        load_dataset("shapes", n=5, channels=1)
    with pytest.raises(GenccError, match="'all'"):
        load_dataset("shapes", n=5, split="all")
    with pytest.raises(GenccError, match="n must be"):
        load_dataset("shapes", n=0)
