"""Checkpoint directories: config.json, safetensors sampling weights, and the training state.

Layout of CKPT/:
  config.json          model kind, network config, data (name, shape, normalization), SDE, training
                       settings, step, last losses, library versions
  weights.safetensors  the weights that are sampled: the EMA eps-network, or the GAN generator
  train_state.pt       raw weights, optimizer states, step: read with torch.load(weights_only=True)

Directories are written whole into a temporary sibling and renamed into place, and nothing is ever
unpickled on load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from gencc.runtime.atomic import atomic_dir
from gencc.runtime.errors import GenccError

FORMAT = "gencc-checkpoint"
VERSION = 1
CONFIG, WEIGHTS, STATE = "config.json", "weights.safetensors", "train_state.pt"


def save_checkpoint(path: str | Path, config: dict, weights: dict[str, torch.Tensor],
                    train_state: dict[str, Any]) -> None:
    config = {"format": FORMAT, "version": VERSION, **config}
    with atomic_dir(path) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # save() to bytes, not save_file(): save_file creates the file with mode 0600.
        (tmp / WEIGHTS).write_bytes(save({k: v.detach().contiguous().cpu() for k, v in weights.items()}))
        torch.save(train_state, tmp / STATE)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise GenccError(f"checkpoint {str(path)!r} does not exist")
    if not (path / CONFIG).is_file():
        raise GenccError(f"{str(path)!r} is not a gencc checkpoint: no {CONFIG} inside")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenccError(f"checkpoint config {str(path / CONFIG)!r} is corrupt: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GenccError(f"{str(path / CONFIG)!r} is not a gencc checkpoint config")
    if config.get("version") != VERSION:
        raise GenccError(f"checkpoint {str(path)!r} has format version {config.get('version')!r}; "
                         f"this gencc reads version {VERSION}")
    for key in ("model", "net", "data", "step"):
        if key not in config:
            raise GenccError(f"checkpoint config {str(path / CONFIG)!r} lacks the {key!r} entry")
    return config


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {WEIGHTS}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise GenccError(f"weights {str(file)!r} are corrupt: {e}") from None


def load_train_state(path: str | Path) -> dict[str, Any]:
    file = Path(path) / STATE
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {STATE}; it cannot be resumed")
    try:
        return torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types for corrupt or hostile files; all mean the same here
        raise GenccError(f"training state {str(file)!r} is corrupt or unsafe: {type(e).__name__}: {e}".splitlines()[0]) from None
