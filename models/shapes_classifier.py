"""A small CNN that tells the `shapes` images' circle, square and triangle apart from "no valid shape":
its softmax gives the valid-shape share and the class coverage of generated samples, and its
penultimate layer is the feature space of their Fréchet distance (FID's recipe with a shapes network).

Class 3, "invalid", is trained on deterministic negatives (recipe in `negatives`): blends of two shapes
of different classes, plain backgrounds without a shape, shapes under heavy pixel noise, flat colour
fields and blocky random colour patterns. The shipped weights in models/pretrained/shapes_classifier/ are reproduced,
bit for bit on one CPU thread, by one command (about a minute):

    python -m gencc.models.shapes_classifier
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import load_shapes_split
from .scorer import Recipe, Scorer, fit, train_and_save
from .shapes import CLASSES

PRETRAINED = Path(__file__).parent / "pretrained" / "shapes_classifier"
COMMAND = "python -m gencc.models.shapes_classifier"
IMAGE_SHAPE = (3, 32, 32)
INVALID = len(CLASSES)   # the label of "no valid shape"
CLASS_NAMES = (*CLASSES, "invalid")
VALID_PROB = 0.5         # a valid shape: a shape class on top with at least this probability (real test
                         # images: 99.6% valid at 0.5, 93.2% at 0.9, the classifier being cautious)


@dataclass(frozen=True)
class ShapeClassifierConfig:
    channels: int = 16        # first conv; then 2x and 4x, each followed by a 2x2 max-pool (32 -> 4)
    feature_dim: int = 64     # penultimate width: the Fréchet distance fits a 64-d Gaussian
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3          # peak of a cosine schedule that decays to 0
    n_train: int = 6000       # shapes train-split images; half as many negatives are added
    noise_std: float = 0.35   # pixel noise of the "noisy" negatives


class ShapeClassifier(nn.Module):
    def __init__(self, cfg: ShapeClassifierConfig = ShapeClassifierConfig()):
        super().__init__()
        c = cfg.channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * c * 16, cfg.feature_dim), nn.ReLU())
        self.head = nn.Linear(cfg.feature_dim, len(CLASSES) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def negatives(images: np.ndarray, labels: np.ndarray, n: int, seed: int, noise_std: float) -> np.ndarray:
    """n "invalid" images, a fifth of each kind, from shapes images (rng seeded by `seed`):
    0 the average of two images whose shapes differ; 1 the background alone (the corner pixel's colour);
    2 an image plus N(0, noise_std^2) pixel noise; 3 one random colour over the whole frame plus
    N(0, 0.1^2) noise; 4 a random 4x4 RGB pattern blown up to 8x8-pixel blocks. All clipped to [0, 1].
    Kinds 3 and 4 are what an undertrained generator makes: without them, flat colour fields passed as squares.
    """
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(images), (2, n))
    j = np.where(labels[i] == labels[j], (j + 1) % len(images), j)   # mostly different shapes
    shape = images[i].shape
    kinds = [0.5 * (images[i] + images[j]),
             np.broadcast_to(images[i][:, :, :1, :1], shape),
             images[i] + rng.normal(0, noise_std, shape),
             rng.uniform(0, 1, (n, 3, 1, 1)) + rng.normal(0, 0.1, shape),
             rng.uniform(0, 1, (n, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)]
    kind = (np.arange(n) % len(kinds))[:, None, None, None]
    out = np.select([kind == k for k in range(len(kinds))], kinds)
    return np.clip(out, 0, 1).astype(np.float32)


def training_set(seed: int, cfg: ShapeClassifierConfig) -> tuple[np.ndarray, np.ndarray]:
    """The shapes train split plus negatives (label 3), as the classifier is trained."""
    ds = load_shapes_split("train", cfg.n_train)
    neg = negatives(ds.data, ds.labels, cfg.n_train // 2, seed, cfg.noise_std)
    return np.concatenate([ds.data, neg]), np.concatenate([ds.labels, np.full(len(neg), INVALID)])


SCORER = Scorer("shapes", "gencc-shapes-classifier", IMAGE_SHAPE, PRETRAINED,
                lambda config: ShapeClassifier(ShapeClassifierConfig(**config)))
load_classifier, read_meta, save_classifier = SCORER.load, SCORER.read_meta, SCORER.save
features, probs = SCORER.features, SCORER.probs


def train_classifier(seed: int = 0, cfg: ShapeClassifierConfig = ShapeClassifierConfig()
                     ) -> tuple[ShapeClassifier, dict]:
    """Train; return the model (eval mode) and its accuracy on the held-out test split and its negatives."""
    x, y = (torch.from_numpy(a) for a in training_set(seed, cfg))
    model = fit(lambda: ShapeClassifier(cfg), x, y, Recipe(cfg.epochs, cfg.batch_size, cfg.lr), seed)
    return model, held_out_accuracy(model, seed, cfg)


def held_out_accuracy(model: ShapeClassifier, seed: int, cfg: ShapeClassifierConfig) -> dict:
    test = load_shapes_split("test")
    neg = negatives(test.data, test.labels, len(test.data), seed + 1, cfg.noise_std)
    return {"shapes_test": float((probs(test.data, model).argmax(1) == test.labels).mean()),
            "negatives_test": float((probs(neg, model).argmax(1) == INVALID).mean())}


def valid_shapes(p: np.ndarray) -> np.ndarray:
    """Rows of probabilities (N, 4) whose top class is a shape (not "invalid") with probability >= 0.5."""
    return (p.argmax(1) != INVALID) & (p.max(1) >= VALID_PROB)


def shape_coverage(p: np.ndarray) -> float:
    """Entropy of the shape-type histogram of the valid rows, over log 3: 1 = every type equally often."""
    counts = np.bincount(p[valid_shapes(p)].argmax(1), minlength=len(CLASSES))[:len(CLASSES)]
    if counts.sum() == 0:
        return 0.0
    q = counts[counts > 0] / counts.sum()
    return float((q * np.log(1.0 / q)).sum() / np.log(len(CLASSES)))


def main(seed: int = 0, path: Path = PRETRAINED) -> dict:
    cfg = ShapeClassifierConfig()
    return train_and_save(SCORER, lambda: train_classifier(seed, cfg), {
        "seed": seed, "command": COMMAND, "feature_dim": cfg.feature_dim, "classes": list(CLASS_NAMES),
        "config": asdict(cfg),
        "data": f"shapes train split ({cfg.n_train} images) + {cfg.n_train // 2} negatives; accuracy on the "
                "1000-image test split and 1000 test negatives"}, path)


if __name__ == "__main__":
    main()
