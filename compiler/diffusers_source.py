"""A diffusers UNet2DModel folder (as `save_pretrained` writes it) as a gencc eps-network, with its scheduler.

The network is wrapped as net(x, timestep) = unet(x, timestep).sample, time input timestep:N. The
scheduler config (`options.scheduler`, else the pipeline's scheduler/ folder beside or inside the
source) gives N (num_train_timesteps), the beta table (beta_schedule, beta_start, beta_end) and the
prediction (prediction_type: epsilon, sample or v_prediction); an option that contradicts it is refused.
Without one, the options given and otherwise DDPMScheduler's defaults (linear, 1000 steps, epsilon) are
used, and the log says so. The configs are read and checked before diffusers is imported, so a folder
of another class is refused at once.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import nn

from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import read_json, short
from gencc.runtime.sde import sde_from_scheduler_config

from .options import PREDICTION_ALIASES, CompileOptions

Log = Callable[[str], None]
CLASS = "UNet2DModel"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
DEFAULT_SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                     "prediction_type": "epsilon"}   # DDPMScheduler's own defaults


class DiffusersUNet(nn.Module):
    """unet(x, timestep).sample as a plain net(x, timestep) -> tensor."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x, timestep):
        return self.unet(x, timestep, return_dict=False)[0]


def load_diffusers(folder: Path, options: CompileOptions, log: Log) -> tuple[nn.Module, CompileOptions, dict]:
    """The wrapped UNet, the options its configs imply, and the manifest's source record."""
    unet_dir = folder / "unet" if (folder / "model_index.json").is_file() else folder
    config = _unet_config(unet_dir)
    scheduler_path = _scheduler_path(folder, unet_dir, options.scheduler)
    scheduler = None if scheduler_path is None else _scheduler_config(scheduler_path)
    if scheduler is None:
        log("no scheduler config found (pass --scheduler): DDPMScheduler's defaults, where no option says otherwise")
    options = _with_scheduler(options, config, scheduler)
    unet = _load_unet(unet_dir)
    source = {"kind": "diffusers", "class": CLASS, "folder": folder.name,
              "scheduler": None if scheduler_path is None else scheduler_path.name}
    return DiffusersUNet(unet), options, source


def _unet_config(unet_dir: Path) -> dict:
    path = unet_dir / "config.json"
    if not path.is_file():
        raise GenccError(f"{str(unet_dir)!r} is not a diffusers model folder: no config.json inside")
    config = read_json(path, "diffusers model config")
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name != CLASS:
        raise GenccError(f"{str(path)!r} describes a {short(name)}; gencc compiles diffusers {CLASS} folders only")
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise GenccError(f"{str(path)!r} is a class-conditional {CLASS}; wrap it as a module with num_classes instead")
    if not (unet_dir / WEIGHTS).is_file():
        raise GenccError(f"{str(unet_dir)!r} has no {WEIGHTS} (save_pretrained's safetensors weights; "
                         "pickled .bin weights are not loaded)")
    return config


def _scheduler_path(folder: Path, unet_dir: Path, given) -> Path | None:
    if given is not None:
        path = Path(given)
        path = path / SCHEDULER_CONFIG if path.is_dir() else path
        if not path.is_file():
            raise GenccError(f"scheduler config {str(path)!r} does not exist")
        return path
    for candidate in (folder / "scheduler", unet_dir.parent / "scheduler"):   # a pipeline folder, or its unet/
        if (candidate / SCHEDULER_CONFIG).is_file():
            return candidate / SCHEDULER_CONFIG
    return None


def _scheduler_config(path: Path) -> dict:
    config = read_json(path, "diffusers scheduler config")
    if not isinstance(config, dict):
        raise GenccError(f"{str(path)!r} must hold a JSON object")
    try:
        sde_from_scheduler_config(config)   # refuses what the SDE cannot be: trained_betas, zero terminal SNR
    except GenccError as e:
        raise GenccError(f"{str(path)!r}: {e}") from None
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_ALIASES:
        raise GenccError(f"{str(path)!r}: unknown prediction_type {short(prediction)}; "
                         f"expected one of {', '.join(PREDICTION_ALIASES)}")
    return config


def _with_scheduler(options: CompileOptions, config: dict, scheduler: dict | None) -> CompileOptions:
    """The options with the network's conventions taken from its configs (sample_shape only if not given).

    An option the user set that contradicts a scheduler config is refused (it would be silently wrong
    either way); without a scheduler config, the user's options replace DDPMScheduler's defaults.
    """
    get = lambda k: (scheduler or DEFAULT_SCHEDULER).get(k, DEFAULT_SCHEDULER[k])   # noqa: E731
    size = config.get("sample_size", 32)
    size = (size, size) if isinstance(size, int) else tuple(size)
    n = get("num_train_timesteps")
    derived = {"time_input": f"timestep:{n}", "prediction": PREDICTION_ALIASES[get("prediction_type")],
               "schedule": get("beta_schedule"), "num_train_timesteps": n, "beta_start": float(get("beta_start")),
               "beta_end": float(get("beta_end"))}
    defaults = CompileOptions()
    given = {k: getattr(options, k) for k in derived if getattr(options, k) != getattr(defaults, k)}
    for k, v in given.items():
        if scheduler is not None and PREDICTION_ALIASES.get(v, v) != derived[k]:
            raise GenccError(f"{k}={v!r} contradicts the scheduler config's {derived[k]!r}; leave the option out, "
                             "or pass the scheduler config the network was trained with")
    shape = options.sample_shape or (int(config.get("in_channels", 3)), *map(int, size))
    return dataclasses.replace(options, **{**derived, **given}, sample_shape=shape, scheduler=None)


def _load_unet(unet_dir: Path) -> nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError as e:
        raise GenccError(f"diffusers folders need diffusers (pip install 'gencc[diffusers]'): {e}") from None
    try:
        return UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        first = next((s for s in str(e).splitlines() if s.strip()), type(e).__name__)
        raise GenccError(f"diffusers cannot load {str(unet_dir)!r}: {first}") from None
