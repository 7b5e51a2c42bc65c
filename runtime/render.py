"""PNG pictures of samples: a grid for images, a scatter plot against real data for 2-D points."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import GenccError


def save_png(path: str | Path, samples: np.ndarray, reference: np.ndarray | None = None) -> None:
    """Images (N, C, H, W) in [0, 1] become a grid; (N, 2) points a scatter plot (reference in grey)."""
    from PIL import Image

    img = picture(samples, reference)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def picturable(sample_shape: tuple[int, ...]) -> bool:
    """Whether `picture` can draw samples of this shape: images (C, H, W) or 2-D points."""
    return len(sample_shape) == 3 or tuple(sample_shape) == (2,)


def picture(samples: np.ndarray, reference: np.ndarray | None = None, frame: np.ndarray | None = None) -> np.ndarray:
    """The uint8 picture save_png writes; `frame` (points) fixes a scatter plot's axes, e.g. across frames."""
    if samples.ndim == 4:
        return image_grid(samples)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return scatter(samples, reference, frame=frame)
    raise GenccError(f"pictures are of images (N, C, H, W) or 2-D points (N, 2); samples have shape {samples.shape}")


def image_grid(x: np.ndarray, max_images: int = 100, scale: int = 4) -> np.ndarray:
    """Tile up to `max_images` images into a square-ish uint8 grid, upscaled by `scale` for viewing."""
    x = np.clip(x[:max_images], 0.0, 1.0)
    n, c, h, w = x.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i].transpose(1, 2, 0)
    grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    out = (grid * 255 + 0.5).astype(np.uint8)
    return out[..., 0] if c == 1 else out


def scatter(points: np.ndarray, reference: np.ndarray | None = None, size: int = 512,
            frame: np.ndarray | None = None) -> np.ndarray:
    """Samples in blue over reference data in grey, on a frame that fits `frame`, else the reference."""
    frame = frame if frame is not None else reference if reference is not None else points
    lo, hi = np.percentile(frame, 0.5, axis=0), np.percentile(frame, 99.5, axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    lo, hi = lo - pad, hi + pad
    img = np.full((size, size, 3), 255, np.uint8)
    for pts, colour in ((reference, (170, 170, 170)), (points, (31, 90, 200))):
        if pts is None:
            continue
        uv = (pts - lo) / (hi - lo) * (size - 1)
        ok = np.all((uv >= 0) & (uv <= size - 1), axis=1)
        u, v = uv[ok, 0].astype(int), (size - 1 - uv[ok, 1]).astype(int)
        for du in (0, 1):
            for dv in (0, 1):
                img[np.minimum(v + dv, size - 1), np.minimum(u + du, size - 1)] = colour
    return img
