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
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from gencc.runtime.atomic import atomic_dir, readable_dir
from gencc.runtime.errors import GenccError, size_text
from gencc.runtime.jsonfile import one_line, parse_json, read_json, short
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import sde_from_dict

from .weights_header import WeightsHeader, read_header

FORMAT = "gencc-checkpoint"
VERSION = 1
CONFIG, WEIGHTS, STATE = "config.json", "weights.safetensors", "train_state.pt"
MODELS = ("diffusion", "gan", "autoencoder")   # autoencoder: latent diffusion's first stage (models/latent.py)
MAX_NET_VALUE = 1 << 16   # any width, depth or size in a network config; the weights must fit them too
SHAPE_KEY = "gencc.sample_shape"   # weights metadata: the sample shape the network was trained on
LEGACY_MAX_SIDE = 64   # image side allowed to fully convolutional checkpoints written before SHAPE_KEY


def save_checkpoint(path: str | Path, config: dict, weights: dict[str, torch.Tensor],
                    train_state: dict[str, Any]) -> None:
    config = {"format": FORMAT, "version": VERSION, **config}
    with atomic_dir(path) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # save() to bytes, not save_file(): save_file creates the file with mode 0600. The sample shape goes
        # into the weights too: no weight of a fully convolutional net pins it, and loading checks it.
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        trained = {SHAPE_KEY: json.dumps(config["data"]["sample_shape"])}
        (tmp / WEIGHTS).write_bytes(save(tensors, metadata=trained))
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
        if k in _NET_OPTIONS:   # the few fields that are not sizes: their own checks
            expect(_NET_OPTIONS[k][0](v), f"net {k!r} must be {_NET_OPTIONS[k][1]}", v)
            continue
        expect(k == "arch" or _net_value(v), f"net {k!r} must be a positive integer <= {MAX_NET_VALUE} "
                                             "or a short list of them", v)
    d = c["data"]
    expect(isinstance(d, dict) and isinstance(d.get("name"), str) and d.get("kind") in ("vector", "image"),
           "data must be an object with a 'name' and a 'kind' (vector or image)", d)
    digest = d.get("sha256", "0" * 64)   # a user's data, by content (models/data.py: data_digest)
    expect(isinstance(digest, str) and len(digest) == 64 and all(ch in "0123456789abcdef" for ch in digest),
           "data sha256 must be 64 lowercase hex digits", digest)
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


_NET_OPTIONS = {   # the autoencoder's options (models/autoencoder.py)
    "upsample": (lambda v: v in ("transpose", "resize"), "'transpose' or 'resize'"),
    "edge_weight": (lambda v: type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1e3,
                    "a number from 0 to 1000"),
}


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
        raise GenccError(f"training state {str(file)!r} is corrupt or unsafe: {_load_failure(e)}") from None
    step = state.get("step") if isinstance(state, dict) else None
    if type(step) is not int or step < 0:
        raise GenccError(f"training state {str(file)!r} is corrupt: expected a dict with a non-negative 'step', "
                         f"got {short(type(state).__name__ if step is None else step)}")
    return state


def _load_failure(e: Exception) -> str:
    """Why torch.load refused the file, without torch's advice to retry with weights_only=False: that
    would run whatever code the file carries, which is what the refusal protects against."""
    text = str(e)
    if "Weights only load failed" not in text:
        return f"{type(e).__name__}: {one_line(e)}"
    found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL [\w.]*\w|Unsupported operand \S+", text)
    why = f" ({found.group(0).split('GLOBAL ')[-1]})" if found else ""
    return f"it holds pickled Python objects, which gencc never loads{why}"


def check_network(path: str | Path, config: dict, build: Callable[[], torch.nn.Module]) -> None:
    """Refuse a config that does not describe exactly the network in the weights file, allocating nothing.

    The weights file's header is read first (models/weights_header.py): what it declares must fit in
    memory, and bounds every size in the config before `build` runs on the meta device, so neither a
    huge width nor a huge depth costs anything. Then the config's tensors must equal the declared
    ones, name by name. An image side that no weight pins (fully convolutional nets) must be the one the
    weights were trained on, which the weights file records.
    """
    path = checkpoint_dir(path)
    file = path / WEIGHTS
    if not file.is_file():
        raise GenccError(f"checkpoint {str(path)!r} has no {WEIGHTS}")
    header = read_header(file)
    _check_memory(file, header)
    _check_trained_shape(path, config, header)
    _check_net_sizes(path, config["net"], header)
    try:
        with torch.device("meta"):
            made = {k: (_DTYPES.get(v.dtype), tuple(v.shape)) for k, v in build().state_dict().items()}
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:
        raise GenccError(f"checkpoint {str(path)!r}: its network config cannot be built: {one_line(e)}") from None
    _compare(path, made, header.tensors)


def load_network(path: str | Path, config: dict, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The network `build` makes from `config`, holding the checkpoint's weights (see check_network)."""
    check_network(path, config, build)
    net = build()
    try:
        net.load_state_dict(load_weights(path))
    except RuntimeError as e:
        raise GenccError(f"weights in {str(path)!r} do not match its config: {str(e).splitlines()[0]}") from None
    return net


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL"}
_COUNTS = ("depth", "downsamples")   # how many layers: bounded by the number of tensors
_UNPINNED = ("arch", "size", "sample_shape", "kl_divisor", "upsample", "edge_weight")   # no weight's dimension


def _check_memory(file: Path, header: WeightsHeader) -> None:
    need, total = 2 * header.nbytes, _physical_memory()   # the network's tensors and the file's, while copying
    if total and need > total:
        raise GenccError(f"weights {str(file)!r} declare {size_text(header.nbytes)} of tensors; loading "
                         f"them needs about {size_text(need)} of memory, more than this machine's "
                         f"{size_text(total)}")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):   # not a POSIX system that reports it
        return None


def _check_trained_shape(path: Path, config: dict, header: WeightsHeader) -> None:
    shape = config["data"]["sample_shape"]
    record = header.metadata.get(SHAPE_KEY)
    if record is not None:
        trained = parse_json(record.encode(), f"the {SHAPE_KEY} record of {str(path / WEIGHTS)!r}")
        if trained != shape:
            raise GenccError(f"checkpoint {str(path)!r}: its config asks for sample shape {short(shape)}, but its "
                             f"weights were trained on sample shape {short(trained)}")
        return
    # Written before the record existed: nothing states the trained side of a fully convolutional net.
    side = config["net"].get("size")
    if config["net"]["arch"] in ("unet", "autoencoder") and side > LEGACY_MAX_SIDE:
        raise GenccError(f"checkpoint {str(path)!r}: its config asks for {side}x{side} images, and its weights, "
                         "written before gencc recorded the trained shape, do not pin the size; such checkpoints "
                         f"load at up to {LEGACY_MAX_SIDE}x{LEGACY_MAX_SIDE}")


def _check_net_sizes(path: Path, net: dict, header: WeightsHeader) -> None:
    """Every width in the config is some tensor's dimension, and every layer count is at most the number of
    tensors: anything larger cannot match the weights, and would only make the meta build slow."""
    for key, value in net.items():
        if key in _UNPINNED:
            continue
        count = key in _COUNTS
        bound = len(header.tensors) if count else header.largest_dim
        if max(value if isinstance(value, list) else [value]) > bound:
            what = f"holds only {bound} tensors" if count else f"has no dimension above {bound}"
            raise GenccError(f"checkpoint {str(path)!r}: its net {key!r} is {short(value)}, but {WEIGHTS} {what}")


def _compare(path: Path, made: dict, declared: dict) -> None:
    for name, (dtype, shape) in made.items():
        if name not in declared:
            raise GenccError(f"checkpoint {str(path)!r}: its config describes tensor {short(name)}, which "
                             f"{WEIGHTS} does not hold")
        if declared[name] != (dtype, shape):
            raise GenccError(f"checkpoint {str(path)!r}: its config describes tensor {short(name)} of shape "
                             f"{shape} ({dtype}), but {WEIGHTS} holds {declared[name][1]} ({declared[name][0]})")
    extra = sorted(set(declared) - set(made))
    if extra:
        raise GenccError(f"checkpoint {str(path)!r}: {WEIGHTS} holds {len(extra)} tensors its config does not "
                         f"describe, such as {short(extra[0])}")
