"""Pictures of the reverse process: the denoised estimate every K steps as PNGs, and an animated GIF.

A preview folder holds `step_0010.png`, `step_0020.png`, ... (Tweedie's x0_hat after that many steps,
in data units; runtime/watch.py), `final.png` (the samples), `reverse.gif` (the same frames in order)
and `preview.json` (what made them). It is written whole into a hidden sibling and renamed into place,
so it is never half-written; an existing folder is replaced only if gencc wrote it (it has
preview.json) or it is empty. A GAN has no reverse process: its preview is the single final frame.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import atomic_dir, check_output_path
from .errors import GenccError
from .jsonfile import read_json
from .model import Model
from .render import picturable, picture, picture_count
from .watch import StepView

FORMAT = "gencc-preview"
MAX_GIF_FRAMES = 100         # more frames are thinned evenly (the PNGs keep every one): GIFs stay small
GIF_MS, GIF_LAST_MS = 120, 1500


def check_preview_dir(path: str | Path) -> Path:
    """Refuse a preview folder that would replace anything but an earlier preview."""
    path = check_output_path(path, what="preview folder", directory=True)
    if path.is_dir() and any(path.iterdir()) and not _is_preview(path):
        raise GenccError(f"preview folder {str(path)!r} is not empty and was not written by gencc "
                         "(no preview.json); choose a new or empty folder")
    return path


def check_picturable(model: Model) -> None:
    if not picturable(model.sample_shape):
        raise GenccError(f"--preview draws images or 2-D points; this model makes samples of shape "
                         f"{model.sample_shape}")


def check_every(every: int) -> int:
    if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every <= 0:
        raise GenccError(f"preview-every must be a positive integer, got {every!r}")
    return int(every)


def write_preview(model: Model, out_dir: str | Path, *, every: int, n: int | None = None,
                  reference: np.ndarray | None = None, **sampling) -> dict:
    """Sample the first `n` samples (default render.picture_count; `sampling`: Model.sample's steps,
    sampler, seed, ...), recording x0_hat every `every` steps; write the folder, return its record.

    Sample i depends only on (seed, i), so the final frame shows exactly the first n samples a
    `gencc sample` run with the same settings writes."""
    out_dir = check_preview_dir(out_dir)
    every = check_every(every)
    check_picturable(model)
    n = n or picture_count(model.sample_shape)
    frames = _Frames(every)
    final = model.sample(n, batch_size=n, on_step=frames, **sampling)
    frames.add("final", None, None, final)
    record = {"format": FORMAT, "version": 1, "model": model.kind, "backend": model.backend, "n": n,
              "every": every, "sampling": json.loads(json.dumps(sampling, default=str)),
              "denoised": "x0_hat = (x_t - sigma_t eps) / gamma_t, data units", "frames": frames.meta}
    with atomic_dir(out_dir) as tmp:
        frames.write(tmp, reference)
        (tmp / "preview.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


class _Frames:
    """The on_step callback: keeps x0_hat every `every` steps (one chunk: the preview is one batch)."""

    def __init__(self, every: int):
        self.every = every
        self.arrays: list = []
        self.meta: list = []

    def __call__(self, view: StepView) -> None:
        if view.t is not None and (view.k + 1) % self.every == 0:
            self.add(f"step_{view.k + 1:04d}", view.k + 1, view.t, view.denoised())

    def add(self, name: str, step: int | None, t: float | None, x: np.ndarray) -> None:
        self.arrays.append(x)
        self.meta.append({"file": f"{name}.png", "step": step, "t": None if t is None else round(t, 6)})

    def write(self, folder: Path, reference: np.ndarray | None) -> None:
        from PIL import Image

        # One frame for every picture: the reference's, else the final samples' (x0_hat starts near the mean).
        frame = reference if reference is not None else self.arrays[-1]
        images = []
        for meta, x in zip(self.meta, self.arrays, strict=True):
            img = Image.fromarray(picture(x, reference, frame=frame))
            img = _caption(img, "final samples" if meta["step"] is None
                           else f"step {meta['step']}  t={meta['t']:.3f}  x0 estimate")
            img.save(folder / meta["file"], format="PNG")
            images.append(img)
        keep = np.unique(np.linspace(0, len(images) - 1, min(len(images), MAX_GIF_FRAMES)).round().astype(int))
        gif = [images[i].convert("P", palette=Image.Palette.ADAPTIVE) if images[i].mode == "RGB" else images[i]
               for i in keep]
        gif[0].save(folder / "reverse.gif", format="GIF", save_all=True, append_images=gif[1:], loop=0,
                    duration=[GIF_MS] * (len(gif) - 1) + [GIF_LAST_MS], optimize=False)


def _caption(img, text: str):
    """The picture below a white strip naming the frame (which also keeps GIF frames distinct)."""
    from PIL import Image, ImageDraw

    strip = 14
    out = Image.new(img.mode, (img.width, img.height + strip), "white")   # every GIF frame the same size
    out.paste(img, (0, strip))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def _is_preview(path: Path) -> bool:
    f = path / "preview.json"
    if not f.is_file():
        return False
    try:
        return read_json(f, "preview record").get("format") == FORMAT
    except (GenccError, AttributeError):
        return False
