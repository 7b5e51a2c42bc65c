"""Checkpoint directories: config.json, safetensors sampling weights, and the training state.

Layout of CKPT/:
  config.json          model kind, network config, data (name, shape, normalization), SDE, training
                       settings, step, last losses, library versions
  weights.safetensors  the weights that are sampled: the EMA eps-network, or the GAN generator
  train_state.pt       raw weights, optimizer states, step: read with torch.load(weights_only=True)

Directories are written whole into a temporary sibling and renamed into place (a write killed
between its two renames leaves `.NAME.old`, which loading reads in NAME's place), configs are checked
field by field, and nothing is ever unpickled on load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from gencc.runtime.atomic import atomic_dir, readable_dir
from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line, read_json, short
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import sde_from_dict

FORMAT = "gencc-checkpoint"
VERSION = 1
CONFIG, WEIGHTS, STATE = "config.json", "weights.safetensors", "train_state.pt"
MODELS = ("diffusion", "gan", "autoencoder")   # autoencoder: latent diffusion's first stage (models/latent.py)
MAX_NET_VALUE = 1 << 16   # any width, depth or size in a network config; the weights must fit them too


def save_checkpoint(path: str | Path, config: dict, weights: dict[str, torch.Tensor],
                    train_state: dict[str, Any]) -> None:
    config = {"format": FORMAT, "version": VERSION, **config}
    with atomic_dir(path) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # save() to bytes, not save_file(): save_file creates the file with mode 0600.
        (tmp / WEIGHTS).write_bytes(save({k: v.detach().contiguous().cpu() for k, v in weights.items()}))
        torch.save(train_state, tmp / STATE)


def checkpoint_dir(path: str | Path) -> Path:
    """The directory to read: `path`, or the copy a write interrupted between its renames left beside it.

    Readers never move anything; the next writer (training, see runtime/atomic.py) puts it back.
    """
    return readable_dir(path)


def is_checkpoint(path: str | Path) -> bool:
    return (checkpoint_dir(path) / CONFIG).is_file()


def load_config(path: str | Path) -> dict:
    """config.json, checked field by field: every later use of it may trust its types and ranges."""
    path = checkpoint_dir(path)
    if not path.exists():
        raise GenccError(f"checkpoint {str(path)!r} does not exist")
    if not (path / CONFIG).is_file():
        raise GenccError(f"{str(path)!r} is not a gencc checkpoint: no {CONFIG} inside")
    config = read_json(path / CONFIG, "corrupt checkpoint config")   # the message reads "... is not valid JSON"
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GenccError(f"{str(path / CONFIG)!r} is not a gencc checkpoint config")
    if config.get("version") != VERSION:
        raise GenccError(f"checkpoint {str(path)!r} has format version {short(config.get('version'))}; "
                         f"this gencc reads version {VERSION}")
    for key in ("model", "net", "data", "step"):
        if key not in config:
            raise GenccError(f"checkpoint config {str(path / CONFIG)!r} lacks the {key!r} entry")
    _check_config(config, str(path / CONFIG))
    return config


def _check_config(c: dict, where: str) -> None:
    def expect(ok, what: str, value) -> None:
        if not ok:
            raise GenccError(f"checkpoint config {where!r}: {what}, got {short(value)}")

    expect(c["model"] in MODELS, f"model must be one of {', '.join(MODELS)}", c["model"])
    expect(type(c["step"]) is int and c["step"] >= 0, "step must be a non-negative integer", c["step"])
    net = c["net"]
    expect(isinstance(net, dict) and isinstance(net.get("arch"), str), "net must be an object with an 'arch'", net)
    for k, v in net.items():
        expect(k == "arch" or _net_value(v), f"net {k!r} must be a positive integer <= {MAX_NET_VALUE} "
                                             "or a short list of them", v)
    d = c["data"]
    expect(isinstance(d, dict) and isinstance(d.get("name"), str) and d.get("kind") in ("vector", "image"),
           "data must be an object with a 'name' and a 'kind' (vector or image)", d)
    shape = d.get("sample_shape")
    expect(isinstance(shape, list) and 0 < len(shape) <= 4 and _net_value(shape),
           "data sample_shape must be 1-4 positive integers", shape)
    made = {"mlp": [net.get("data_dim")], "unet": [net.get("channels"), net.get("size"), net.get("size")],
            "gan": net.get("sample_shape"),
            "autoencoder": [net.get("channels"), net.get("size"), net.get("size")]}.get(net["arch"], shape)
    expect(made == shape, f"the {net['arch']} network does not make samples of shape {shape}", net)
    norm = Normalization.from_dict(d.get("normalization"))
    expect(list(norm.sample_shape) == shape, f"normalization must be for sample shape {shape}", d.get("normalization"))
    if c["model"] == "diffusion":
        sde_from_dict(c.get("sde"))
    for key in ("train", "losses", "versions"):
        expect(isinstance(c.get(key, {}), dict), f"{key} must be an object", c.get(key))


def _net_value(v) -> bool:
    """A positive integer within bounds, or a short flat list of them (UNet mults, GAN sample_shape)."""
    if isinstance(v, list):
        return 0 < len(v) <= 8 and all(type(x) is int and 0 < x <= MAX_NET_VALUE for x in v)
    return type(v) is int and 0 < v <= MAX_NET_VALUE


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    file = checkpoint_dir(path) / WEIGHTS
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {WEIGHTS}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise GenccError(f"weights {str(file)!r} are corrupt: {one_line(e)}") from None


def load_train_state(path: str | Path) -> dict[str, Any]:
    file = checkpoint_dir(path) / STATE
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {STATE}; it cannot be resumed")
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises many types for corrupt or hostile files; all mean the same here
        raise GenccError(f"training state {str(file)!r} is corrupt or unsafe: "
                         f"{type(e).__name__}: {one_line(e)}") from None
    step = state.get("step") if isinstance(state, dict) else None
    if type(step) is not int or step < 0:
        raise GenccError(f"training state {str(file)!r} is corrupt: expected a dict with a non-negative 'step', "
                         f"got {short(type(state).__name__ if step is None else step)}")
    return state


def check_network_fits(path: str | Path, build: Callable[[], torch.nn.Module]) -> None:
    """Refuse a network config with more parameters than the weights file could hold, before building it.

    `build` runs on the meta device (no memory), so a hostile config cannot ask for terabytes.
    """
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in build().parameters())
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise GenccError(f"checkpoint {str(path)!r}: its network config cannot be built: {one_line(e)}") from None
    file = checkpoint_dir(path) / WEIGHTS
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {WEIGHTS}")
    size = file.stat().st_size
    if n > size:   # at least one byte per parameter, whatever the dtype
        raise GenccError(f"checkpoint {str(path)!r}: its network config has {n} parameters, more than "
                         f"{WEIGHTS} ({size} bytes) can hold")
