"""PNG pictures of samples: a grid for images, a scatter plot against real data for 2-D points."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import GenccError

SAMPLE_COLOUR, REFERENCE_COLOUR = (31, 90, 200), (170, 170, 170)
# Value ranges images are stored in; a grid maps the first that holds the samples to black..white.
IMAGE_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0))
OVERSHOOT = 0.25   # samples stray outside their data's range by a little; by more, they are in another range
POINTS, IMAGES = 1000, 64    # samples one picture shows: enough to see a 2-D density / an 8x8 grid


def picture_count(sample_shape: tuple[int, ...]) -> int:
    """How many samples make one picture: POINTS for a density of vectors, IMAGES for an image grid."""
    return POINTS if len(sample_shape) == 1 else IMAGES


def save_png(path: str | Path, samples: np.ndarray, reference: np.ndarray | None = None,
             title: str | None = None) -> None:
    """Images (N, C, H, W) become a grid; (N, 2) points a scatter plot (reference in grey). With a title,
    a band above the picture carries it and, for points, a legend."""
    from PIL import Image

    img = picture(samples, reference)
    if title is not None:
        legend = None
        if samples.ndim == 2:
            legend = [("samples", SAMPLE_COLOUR)] + ([("data", REFERENCE_COLOUR)] if reference is not None else [])
        img = titled(img, title, legend)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def titled(img: np.ndarray, title: str, legend: list[tuple[str, tuple]] | None = None) -> np.ndarray:
    """`img` (uint8, grey or RGB) below a white band holding `title` and, after it, `legend`'s colour keys."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
    except TypeError:   # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    keys = " ".join(f"   {label}" for label, _ in legend or [])
    band = 24
    width = max(img.shape[1], int(measure.textlength(title + keys, font=font)) + 16 + 16 * len(legend or []))
    canvas = Image.new("RGB", (width, img.shape[0] + band), "white")
    canvas.paste(Image.fromarray(img).convert("RGB"), (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    x = 4 + measure.textlength(title, font=font) + 16
    for label, colour in legend or []:
        draw.rectangle((x, 8, x + 9, 17), fill=colour)
        draw.text((x + 14, 4), label, fill=(0, 0, 0), font=font)
        x += 14 + measure.textlength(label, font=font) + 16
    return np.asarray(canvas)


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
    """Tile up to `max_images` images into a square-ish uint8 grid, upscaled by `scale` for viewing.
    Values are scaled from their range (image_range) to black..white."""
    x = np.asarray(x[:max_images], np.float64)
    lo, hi = image_range(x)
    x = np.clip(np.nan_to_num((x - lo) / (hi - lo)), 0.0, 1.0)
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


def image_range(x: np.ndarray) -> tuple[float, float]:
    """The range `x`'s values are stored in: the first of IMAGE_RANGES that holds them up to OVERSHOOT of its
    width (uint8-style 0..255 data included), else their own min..max."""
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return IMAGE_RANGES[0]
    lo, hi = float(finite.min()), float(finite.max())
    for a, b in IMAGE_RANGES:
        slack = OVERSHOOT * (b - a)
        if a - slack <= lo and hi <= b + slack:
            return a, b
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def scatter(points: np.ndarray, reference: np.ndarray | None = None, size: int = 512,
            frame: np.ndarray | None = None) -> np.ndarray:
    """Samples in blue over reference data in grey, on a frame that fits `frame`, else the reference."""
    frame = frame if frame is not None else reference if reference is not None else points
    lo, hi = np.percentile(frame, 0.5, axis=0), np.percentile(frame, 99.5, axis=0)
    pad = 0.1 * (hi - lo) + 1e-6
    lo, hi = lo - pad, hi + pad
    img = np.full((size, size, 3), 255, np.uint8)
    for pts, colour in ((reference, REFERENCE_COLOUR), (points, SAMPLE_COLOUR)):
        if pts is None:
            continue
        uv = (pts - lo) / (hi - lo) * (size - 1)
        ok = np.all((uv >= 0) & (uv <= size - 1), axis=1)
        u, v = uv[ok, 0].astype(int), (size - 1 - uv[ok, 1]).astype(int)
        for du in (0, 1):
            for dv in (0, 1):
                img[np.minimum(v + dv, size - 1), np.minimum(u + du, size - 1)] = colour
    return img
