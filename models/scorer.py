"""The small in-repo classifiers that score samples (digits, shapes): what they share.

Each is a directory of `weights.safetensors` and `meta.json` (its format name, config and how it was
trained), written together and read without pickles. A `Scorer` names one of them (format, image
shape, network builder) and gives its features and probabilities; `fit` is the training loop both
use. The per-dataset modules (models/digits_classifier.py, models/shapes_classifier.py) define the
network, the training data and the recipe.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from gencc.runtime.atomic import atomic_dir
from gencc.runtime.errors import GenccError

WEIGHTS, META = "weights.safetensors", "meta.json"


@dataclass(frozen=True)
class Scorer:
    """One shipped classifier: `name` in messages, its meta.json `format`, the image shape it takes,
    where its weights ship, and how to build its network from the config its meta records."""

    name: str
    format: str
    image_shape: tuple[int, ...]
    pretrained: Path
    build: Callable[[dict], nn.Module]

    def load(self, path: str | Path | None = None) -> nn.Module:
        """The shipped classifier (or one saved at `path`), in eval mode; reads safetensors, never pickles."""
        path = Path(path if path is not None else self.pretrained)
        model = self.build(self.read_meta(path)["config"])
        try:
            model.load_state_dict(load_file(str(path / WEIGHTS)))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise GenccError(f"classifier weights {str(path / WEIGHTS)!r} are missing or corrupt: {e}") from None
        return model.eval()

    def read_meta(self, path: str | Path | None = None) -> dict:
        file = Path(path if path is not None else self.pretrained) / META
        try:
            meta = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GenccError(f"classifier metadata {str(file)!r} is missing or corrupt: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != self.format:
            raise GenccError(f"{str(file)!r} is not a gencc {self.name}-classifier metadata file")
        return meta

    def save(self, model: nn.Module, meta: dict, path: str | Path | None = None) -> None:
        """Write weights.safetensors and meta.json together: a reader sees the old pair or the new one."""
        path = Path(path if path is not None else self.pretrained)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(path) as tmp:
            # save() to bytes rather than save_file(): the latter creates the file with mode 0600
            (tmp / WEIGHTS).write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
            (tmp / META).write_text(json.dumps({"format": self.format, **meta}, indent=2) + "\n")

    def features(self, x: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
        """Penultimate-layer features (N, feature_dim), float64, of images (N, *image_shape) in [0, 1]."""
        return self.run(x, (model if model is not None else self.load()).body)

    def probs(self, x: np.ndarray, model: nn.Module | None = None) -> np.ndarray:
        """Softmax class probabilities (N, classes), float64, of images (N, *image_shape) in [0, 1]."""
        return self.run(x, nn.Sequential(model if model is not None else self.load(), nn.Softmax(dim=1)))

    def run(self, x: np.ndarray, net: nn.Module, batch: int = 1024) -> np.ndarray:
        """`net` on images (N, *image_shape), `batch` at a time, without gradients; float64 out."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != self.image_shape or len(x) == 0:
            raise GenccError(f"the {self.name} classifier takes images of shape "
                             f"(N, {', '.join(map(str, self.image_shape))}) with N >= 1, got {x.shape}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        with torch.no_grad():
            return np.concatenate([net(chunk).double().numpy() for chunk in t.split(batch)])


@dataclass(frozen=True)
class Recipe:
    """How `fit` trains: AdamW at `lr` (torch's default weight decay unless given) on a cosine schedule
    that decays to 0, `epochs` passes over shuffled minibatches; `augment(x, g)` alters each minibatch."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-2
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None


def fit(build: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seed: int) -> nn.Module:
    """Train a classifier on (x, y), everything drawn from `seed`; the model comes back in eval mode.

    Bit-reproducible on one CPU thread: the init is seeded without touching the caller's global RNG and
    every minibatch order (and augmentation) comes from one generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs * -(-len(x) // recipe.batch_size))
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(x), generator=g).split(recipe.batch_size):
            batch = x[idx] if recipe.augment is None else recipe.augment(x[idx], g)
            loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_and_save(scorer: Scorer, train: Callable[[], tuple[nn.Module, object]], described: dict,
                   path: str | Path) -> dict:
    """Run `train` (-> model, test accuracy) on one CPU thread, which makes it bit-reproducible, and save
    the model at `path` with a meta of the accuracy, `described` (seed, command, config, data, ...), the
    training time and the versions used; return that meta."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, accuracy = train()
    data = described.pop("data")
    meta = {"test_accuracy": accuracy, **described, "train_seconds": round(time.perf_counter() - start, 1),
            "data": data, "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    scorer.save(model, meta, path)
    shown = f"{accuracy:.4f}" if isinstance(accuracy, float) else accuracy
    print(f"wrote {path} (test accuracy {shown}, {meta['train_seconds']} s)")
    return meta
