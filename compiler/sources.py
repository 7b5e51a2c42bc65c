"""What `gencc.compile` accepts, and how each source becomes something compile_artifact can compile.

  a torch.nn.Module                  the user's eps-network or generator (compiler/user_model.py)
  "pkg.module:factory"               an importable function returning that module; `weights` loads a
                                     .safetensors state dict into it
  "model.onnx"                       an ONNX graph from elsewhere, inputs (x, time) (compiler/onnx_source.py)
  a diffusers UNet2DModel folder     config.json + weights, or a pipeline folder with unet/ and scheduler/
                                     (compiler/diffusers_source.py)
  a gencc checkpoint or export       as `gencc compile` always took them; the network options do not apply
"""
from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line

from .options import CompileOptions

Log = Callable[[str], None]
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_BUILD_FIELDS = ("target", "arch", "force", "sign", "tuning")   # how to compile, not what the network is


def compile_source(source, out: str | Path, options: CompileOptions, log: Log = lambda s: None) -> dict:
    """Compile any accepted source into the artifact `out`; returns its manifest."""
    from .compile import _check_new_output, compile_artifact

    _check_new_output(out, options.force)   # before a network is loaded and probed, which may take a while
    prepared = resolve(source, options, log)
    return compile_artifact(prepared, out, target=options.target, arch=options.arch, force=options.force,
                            log=log, sign=options.sign, tuning=options.tuning)


def resolve(source, options: CompileOptions, log: Log = lambda s: None):
    """A UserModel for a network source, or the Path of a gencc checkpoint / export folder."""
    if not isinstance(source, (str, Path)):
        return _user_model(source, options)
    path = Path(source)
    if not path.exists() and isinstance(source, str) and _FACTORY.fullmatch(source):
        return _user_model(_from_factory(source, options.weights), options, {"kind": "factory", "factory": source})
    if not path.exists():
        raise GenccError(f"source {str(source)!r} does not exist (expected a model folder, an .onnx file, "
                         "or an importable module:factory)")
    if path.is_file() and path.suffix == ".onnx":
        from .onnx_source import load_onnx_net

        net, options = load_onnx_net(path, options)
        return _user_model(net, options, {"kind": "onnx", "file": path.name})
    if _is_gencc(path):
        _refuse_network_options(path, options)
        return path
    if path.is_dir() and ((path / "config.json").is_file() or (path / "model_index.json").is_file()):
        from .diffusers_source import load_diffusers

        net, options, source_info = load_diffusers(path, options, log)
        return _user_model(net, options, source_info)
    raise GenccError(f"{str(path)!r} is neither a gencc checkpoint or export, a diffusers model folder "
                     "(config.json or model_index.json) nor an .onnx file")


def from_torch(net, options: CompileOptions):
    """The adapted network as a runtime Model on the torch backend (what the compiled artifact computes)."""
    return model_of(_user_model(net, options))


def model_of(user):
    """A prepared UserModel as a runtime Model on the torch backend."""
    from gencc.models.torch_backend import model_from_net

    from .user_model import identity

    options = user.options
    conventions = {} if options.kind == "gan" else {"conventions": options.conventions()}
    return model_from_net(options.kind, user.module, user.sample_shape, identity(user.sample_shape), sde=user.sde,
                          latent_dim=options.latent_shape, info={"source": user.source, **conventions},
                          num_classes=options.num_classes)


def _user_model(net, options: CompileOptions, source: dict | None = None):
    from .user_model import UserModel

    return UserModel.prepare(net, options, source)


def _from_factory(spec: str, weights) -> object:
    """Import `pkg.module:factory`, call it, and load `weights` (safetensors) into what it returns."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise GenccError(f"cannot import the factory {spec!r}: {one_line(e)}") from None
    net = factory()
    if weights is not None:
        load_weights(net, weights)
    return net


def load_weights(net, weights: str | Path) -> None:
    """Load a safetensors state dict into `net`, strictly: a missing or extra tensor is an error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights)
    if path.suffix != ".safetensors":
        raise GenccError(f"weights {str(path)!r} must be a .safetensors file (pickled .pt/.bin are not loaded)")
    if not path.is_file():
        raise GenccError(f"weights file {str(path)!r} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise GenccError(f"weights {str(path)!r} are corrupt: {one_line(e)}") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise GenccError(f"weights {str(path)!r} do not fit the network: {one_line(e)}") from None


def _is_gencc(path: Path) -> bool:
    """A gencc checkpoint (its config says so), a latent-diffusion checkpoint, or a `gencc export` folder."""
    from gencc.runtime.artifact import EXPORT

    if not path.is_dir():
        return False
    if (path / EXPORT).is_file() or (path / "latent-diffusion.json").is_file():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == "gencc-checkpoint"


def _refuse_network_options(path: Path, options: CompileOptions) -> None:
    given = [f.name for f in fields(options) if f.name not in _BUILD_FIELDS
             and getattr(options, f.name) != f.default]
    if given:
        raise GenccError(f"{str(path)!r} is a gencc checkpoint or export, which describes itself; the option(s) "
                         f"{', '.join(given)} apply only to a user's network")

