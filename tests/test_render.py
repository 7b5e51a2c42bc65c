"""runtime/render.py: image grids scaled from the data's own value range, and titled pictures with a legend."""
import numpy as np
from PIL import Image

from gencc.runtime.render import REFERENCE_COLOUR, SAMPLE_COLOUR, image_grid, image_range, picture, save_png, titled


def gradient_images(n=4, c=1, h=6, w=6):
    return np.linspace(0.0, 1.0, n * c * h * w).reshape(n, c, h, w)


def test_uint8_range_images_are_scaled_not_clipped():
    x = gradient_images()
    grid255 = image_grid(x * 255.0)
    assert np.array_equal(grid255, image_grid(x))   # 0..255 data draws as its 0..1 counterpart
    inner = grid255[4:-4, 4:-4]
    assert inner.min() < 64 and 64 < np.median(inner) < 192   # a gradient, not a white (clipped) block


def test_minus_one_to_one_images_and_their_overshoot():
    x = gradient_images()
    assert np.abs(image_grid(2 * x - 1).astype(int) - image_grid(x).astype(int)).max() <= 1
    assert image_range(np.array([-0.05, 1.1])) == (0.0, 1.0)   # samples stray a little past [0, 1]
    assert image_range(np.array([-0.9, 0.8])) == (-1.0, 1.0)
    assert image_range(np.array([3.0, 260.0])) == (0.0, 255.0)
    assert image_range(np.array([-40.0, 900.0])) == (-40.0, 900.0)   # no known range: the data's own
    assert image_range(np.array([np.nan, np.inf])) == (0.0, 1.0)


def test_title_band_and_legend_for_points(tmp_path):
    rng = np.random.default_rng(0)
    pts, ref = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    save_png(tmp_path / "p.png", pts, ref, title="moons-diffusion: em, NFE 201")
    img = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    plain = picture(pts, ref)
    assert img.shape[0] > plain.shape[0] and np.array_equal(img[-plain.shape[0]:], plain)
    band = img[:img.shape[0] - plain.shape[0]]
    assert (band.sum(axis=2) < 100).any()   # the title's black text
    for colour in (SAMPLE_COLOUR, REFERENCE_COLOUR):   # one key per series
        assert (band == colour).all(axis=2).sum() >= 50, colour


def test_title_on_an_image_grid_has_no_legend():
    grid = image_grid(gradient_images())
    out = titled(grid, "digits-gan: generator, NFE 1")
    assert out.ndim == 3 and out.shape[0] > grid.shape[0] and out.shape[1] >= grid.shape[1]
    band = out[:out.shape[0] - grid.shape[0]]
    assert not (band == SAMPLE_COLOUR).all(axis=2).any()
