"""Storing and running the small in-repo classifiers that score samples (digits, shapes).

Each is a directory of `weights.safetensors` and `meta.json` (its format name, config and how it was
trained), written together and read without pickles. The per-dataset modules (models/classifier.py,
models/shape_classifier.py) define the network and its training, and call these with their own
format name, image shape and network builder.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from gencc.runtime.atomic import atomic_dir
from gencc.runtime.errors import GenccError

WEIGHTS, META = "weights.safetensors", "meta.json"


def run(x: np.ndarray, net: nn.Module, image_shape: tuple[int, ...], name: str, batch: int = 1024) -> np.ndarray:
    """`net` on images (N, *image_shape), `batch` at a time, without gradients; float64 out."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != image_shape or len(x) == 0:
        raise GenccError(f"the {name} classifier takes images of shape (N, {', '.join(map(str, image_shape))}) "
                         f"with N >= 1, got {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        return np.concatenate([net(chunk).double().numpy() for chunk in t.split(batch)])


def read_meta(path: str | Path, fmt: str, name: str) -> dict:
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenccError(f"classifier metadata {str(file)!r} is missing or corrupt: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise GenccError(f"{str(file)!r} is not a gencc {name}-classifier metadata file")
    return meta


def load(path: str | Path, fmt: str, name: str, build: Callable[[dict], nn.Module]) -> nn.Module:
    """The classifier saved at `path`, built from its meta's config by `build`, in eval mode."""
    path = Path(path)
    model = build(read_meta(path, fmt, name)["config"])
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS)))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise GenccError(f"classifier weights {str(path / WEIGHTS)!r} are missing or corrupt: {e}") from None
    return model.eval()


def store(model: nn.Module, meta: dict, path: str | Path, fmt: str) -> None:
    """Write weights.safetensors and meta.json together: a reader sees the old pair or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        # save() to bytes rather than save_file(): the latter creates the file with mode 0600
        (tmp / WEIGHTS).write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
        (tmp / META).write_text(json.dumps({"format": fmt, **meta}, indent=2) + "\n")
