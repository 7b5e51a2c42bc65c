"""Training previews: a loss curve and a sample picture every N steps and at the end, off the training path.

Samples come from a copy of the sampled weights (the EMA eps-network: a quick DPM-Solver++(2M) run; the
GAN generator: G(z)), with noise fixed by (seed, sample index) through runtime/noise.py's Philox, not
torch's generator: previews neither draw from nor perturb the training's random stream, so a run's
weights are bit-identical with and without them (tests/test_preview.py checks it). The folder holds
`loss.png`, `losses.csv` (every step's losses; kept across --resume) and `samples_step000123.png`
(images and 2-D points only: other data gets the loss curve alone).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from gencc.runtime.atomic import check_output_path, write_bytes_atomic
from gencc.runtime.errors import GenccError
from gencc.runtime.model import GanModel
from gencc.runtime.render import POINTS, picturable, picture_count, save_png

DEFAULT_EVERY = 2000
QUICK_STEPS = 20               # DPM-Solver++(2M) on a log-SNR grid: 10 steps already land close (README)
COLOURS = ((31, 90, 200), (200, 80, 30), (40, 150, 60))


def preview_dir_for(out: Path) -> Path:
    """Beside the checkpoint, not in it: a checkpoint directory is replaced whole at every save."""
    return out.with_name(out.name + ".preview")


def check_train_preview(folder: Path, every: int) -> None:
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise GenccError(f"preview-every must be a non-negative integer (0: no previews), got {every!r}")
    check_output_path(folder, what="preview folder", directory=True)


class TrainPreview:
    """The `watch` callback of models/train.py: records losses, draws pictures every `every` steps."""

    def __init__(self, folder: str | Path, every: int, *, seed: int = 0, reference: np.ndarray | None = None,
                 start_step: int = 0):
        self.folder, self.every, self.seed, self.reference = Path(folder), every, seed, reference
        self.names: list[str] = []
        self.rows = _read_history(self.folder / "losses.csv", start_step)
        self.written: list[Path] = []

    def draw_over(self, data: np.ndarray) -> None:
        """2-D training points, an even subset of them, go under each sample picture in grey."""
        if data.ndim == 2 and data.shape[1] == 2:
            self.reference = data[::max(1, len(data) // POINTS)][:POINTS]

    def __call__(self, step: int, total: int, losses: dict, snapshot) -> None:
        if not self.names:
            self.names = list(losses)
            self.rows = [r for r in self.rows if len(r) == 1 + len(self.names)]   # another model's history
        self.rows.append([step, *(float(losses[k]) for k in self.names)])
        if step % self.every == 0 or step == total:
            self.write(step, snapshot())

    def write(self, step: int, model) -> None:
        self.folder.mkdir(exist_ok=True)
        self.written = []
        if picturable(model.sample_shape):   # other vectors (e.g. 3-D points) get the loss curve only
            picture = self.folder / f"samples_step{step:06d}.png"
            save_png(picture, quick_samples(model, self.seed), self.reference)
            self.written.append(picture)
        write_bytes_atomic(self.folder / "losses.csv", self._csv())
        write_bytes_atomic(self.folder / "loss.png", _png(loss_chart(self.rows, self.names)))
        self.written.append(self.folder / "loss.png")

    def _csv(self) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([["step", *self.names], *self.rows])
        return buf.getvalue().encode()


def quick_samples(model, seed: int) -> np.ndarray:
    """A few samples with fixed noise: the same picture slot shows the same noise at every preview."""
    n = picture_count(model.sample_shape)
    if isinstance(model, GanModel):
        return model.sample(n, seed=seed, batch_size=n)
    return model.sample(n, steps=QUICK_STEPS, sampler="dpm2m", seed=seed, batch_size=n)


def _read_history(path: Path, start_step: int) -> list[list[float]]:
    """Rows of an earlier run up to where it is resumed; an unreadable history starts afresh."""
    if start_step == 0 or not path.is_file():
        return []
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))[1:]
        return [[int(r[0]), *map(float, r[1:])] for r in rows if r and int(r[0]) <= start_step]
    except (OSError, ValueError, UnicodeDecodeError):   # a preview must never stop training
        return []


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def loss_chart(rows: list[list[float]], names: list[str], size: tuple[int, int] = (640, 360)):
    """Each loss against the step: raw values pale, a moving average strong, on shared linear axes."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    data = np.asarray(rows, np.float64).reshape(-1, 1 + len(names))
    steps, values = data[:, 0], data[:, 1:]
    axes = _Axes(size, steps, values)
    axes.draw(draw)
    for i, name in enumerate(names):
        colour = COLOURS[i % len(COLOURS)]
        pale = tuple(int(c + (255 - c) * 0.7) for c in colour)
        for series, fill, width in ((values[:, i], pale, 1), (_smooth(values[:, i]), colour, 2)):
            pts = [axes.xy(s, v) for s, v in zip(steps, series, strict=True)][::max(1, len(steps) // 2000)]
            if len(pts) > 1:
                draw.line(pts, fill=fill, width=width)
        draw.text((axes.left + 8 + 110 * i, 6), f"{name} {values[-1, i]:.4f}" if len(values) else name, fill=colour)
    return img


class _Axes:
    """Data -> pixel map of the plot box; the y range ignores the top and bottom 0.5% (early spikes)."""

    left, right, top, bottom = 60, 10, 24, 30

    def __init__(self, size: tuple[int, int], steps: np.ndarray, values: np.ndarray):
        self.w, self.h = size
        lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        pad = 0.05 * (hi - lo + 1e-9)
        self.lo, self.hi = lo - pad, hi + pad
        self.s0 = steps.min() if len(steps) else 0
        self.s1 = max(steps.max(), self.s0 + 1) if len(steps) else 1

    def xy(self, s: float, v: float) -> tuple[float, float]:
        x = self.left + (s - self.s0) / (self.s1 - self.s0) * (self.w - self.left - self.right)
        y = (self.top + (self.hi - np.clip(v, self.lo, self.hi)) / (self.hi - self.lo)
             * (self.h - self.top - self.bottom))
        return x, y

    def draw(self, draw) -> None:
        draw.rectangle((self.left, self.top, self.w - self.right, self.h - self.bottom), outline="black")
        for v in np.linspace(self.lo, self.hi, 5):
            y = self.xy(self.s0, v)[1]
            draw.line((self.left - 4, y, self.left, y), fill="black")
            draw.text((2, y - 6), f"{v:.3g}", fill="black")
        for s, shift in ((self.s0, 4), (self.s1, 8 * len(str(int(self.s1))))):
            draw.text((self.xy(s, self.lo)[0] - shift, self.h - self.bottom + 6), str(int(s)), fill="black")
        draw.text((self.w // 2 - 10, self.h - self.bottom + 6), "step", fill="black")


def _smooth(v: np.ndarray) -> np.ndarray:
    """Trailing moving average over ~1/50 of the run, so the trend reads through minibatch noise."""
    k = max(1, len(v) // 50)
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    out[k - 1:] = (c[k:] - c[:-k]) / k
    out[:k - 1] = c[1:k] / np.arange(1, k)
    return out
