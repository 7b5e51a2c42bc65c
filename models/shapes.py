"""The built-in `shapes` image set: 32x32 RGB pictures of one coloured circle, square or triangle on a plain
background, drawn procedurally and deterministically from a seed, each labelled with its shape.

Recipe of image i (all draws from np.random.default_rng([seed, i]), in this order, so image i is the
same whatever n is and any prefix of a set is the smaller set):
  label       k ~ U{0, 1, 2}: 0 circle, 1 square, 2 triangle
  size        r ~ U(5, 10) pixels: the circle's radius, the square's half side (axis-aligned),
              the triangle's circumradius (equilateral, apex up)
  centre      (cx, cy), each ~ U(r + 2, 30 - r), so the shape, anti-aliasing included, stays off the border
  colour      HSV hue ~ U(0, 1), saturation ~ U(0.6, 1), value ~ U(0.7, 1), converted to RGB
  background  one grey level ~ U(0, 0.3) for the whole image (dark, so every hue stands out)
Pixels are anti-aliased: a pixel centre at signed distance d from the shape's edge is covered
clip(0.5 - d, 0, 1), and its colour is background + coverage * (colour - background). Values are
float32 in [0, 1], shape (N, 3, 32, 32); labels are int64.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np

SIZE = 32
CLASSES = ("circle", "square", "triangle")
R_RANGE = (5.0, 10.0)
_SIN30, _COS30 = 0.5, math.sqrt(3) / 2


def make_shapes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (float32, (n, 3, 32, 32), in [0, 1]) and their labels (int64, (n,)), per the recipe above."""
    params = [_draw(np.random.default_rng([seed, i])) for i in range(n)]
    labels = np.array([p[0] for p in params], np.int64)
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    for lo in range(0, n, 1024):   # chunks keep the (chunk, 32, 32) distance fields small
        images[lo:lo + 1024] = _render(params[lo:lo + 1024])
    return images, labels


def _draw(rng: np.random.Generator) -> tuple:
    label = int(rng.integers(0, len(CLASSES)))
    r = rng.uniform(*R_RANGE)
    cx, cy = rng.uniform(r + 2, SIZE - 2 - r, size=2)   # 2: the triangle's corners blur up to 1 px out
    colour = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.6, 1), rng.uniform(0.7, 1))
    return label, r, cx, cy, np.array(colour), rng.uniform(0, 0.3)


def _render(params: list[tuple]) -> np.ndarray:
    label, r, cx, cy, colour, grey = (np.array(v) for v in zip(*params, strict=True))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5     # pixel centres
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    r = r[:, None, None]
    dist = np.where(label[:, None, None] == 0, np.hypot(dx, dy) - r,
                    np.where(label[:, None, None] == 1, np.maximum(abs(dx), abs(dy)) - r,
                             _triangle_distance(dx, dy, r)))
    cover = np.clip(0.5 - dist, 0.0, 1.0)[:, None]                      # (n, 1, 32, 32)
    bg = grey[:, None, None, None]
    return bg + cover * (colour[:, :, None, None] - bg)


def _triangle_distance(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (exact inside and along the edges) to an apex-up equilateral triangle of
    circumradius r: the largest of the three edges' half-plane distances (inradius r/2, y points down)."""
    bottom = dy - r / 2
    left = -_COS30 * dx - _SIN30 * dy - r / 2
    right = _COS30 * dx - _SIN30 * dy - r / 2
    return np.maximum(bottom, np.maximum(left, right))
