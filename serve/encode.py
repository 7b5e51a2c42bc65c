"""Samples on the wire: .npy bytes, PNG pictures (runtime/render.py's grid or scatter) and JSON."""
from __future__ import annotations

import base64
import io

import numpy as np

from gencc.runtime.render import picturable, picture

MAX_POINTS = 2000   # points a preview carries for the page's scatter plot


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, np.float32), allow_pickle=False)
    return buf.getvalue()


def png_bytes(x: np.ndarray) -> bytes:
    """The picture of samples x: a grid of images, or a scatter plot of 2-D points."""
    from PIL import Image

    buf = io.BytesIO()
    with np.errstate(invalid="ignore", divide="ignore"):   # one point, or all equal: a degenerate frame, no warning
        img = picture(np.asarray(x, np.float32))
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def json_samples(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float32)
    return {"shape": list(x.shape), "dtype": "float32", "samples": x.tolist()}


def preview(points: bool, x: np.ndarray) -> dict:
    """A preview event's payload: the picture as a PNG data URL and, for 2-D points, the points themselves."""
    out: dict = {}
    if picturable(tuple(x.shape[1:])):
        out["image"] = data_url(png_bytes(x))
    if points:
        out["points"] = np.round(np.asarray(x[:MAX_POINTS], np.float64), 4).tolist()
    return out
