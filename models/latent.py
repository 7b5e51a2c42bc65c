"""Latent diffusion checkpoints and their two-stage training: an autoencoder, then the VP-SDE on its latents.

A latent-diffusion checkpoint is a directory of two ordinary, separately resumable checkpoints:
  latent-diffusion.json  {"format": "gencc-latent-diffusion", "version": 1}: marks the directory
  autoencoder/           model "autoencoder": weights of encoder and decoder, config["latent"] =
                         {"shape": [C, h, w], "scale": s}, s = 1 / std of the training latents
  latent/                model "diffusion" on the scaled latents s * E(x) (posterior means), with the
                         identity normalization: samples x_L decode as D(x_L / s)
The autoencoder is frozen once the latent stage starts: a resumed run refuses to train it further.
"""
from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gencc.runtime.atomic import atomic_dir, readable_dir, write_bytes_atomic
from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import read_json, short
from gencc.runtime.normalize import Normalization

from . import checkpoint as ckpt
from .autoencoder import AEConfig, Autoencoder, encode_means, latent_scale
from .data import Dataset, data_digest
from .factory import config_from_dict, load_net
from .train import (
    LossWeighting,
    TrainConfig,
    TrainResult,
    _Run,
    _seeded,
    check_output,
    check_resume,
    check_same_data,
    train,
)

MARKER, FORMAT, VERSION = "latent-diffusion.json", "gencc-latent-diffusion", 1
AE_DIR, LATENT_DIR = "autoencoder", "latent"
SCALE_SUBSET = 2048   # training images encoded to estimate the latent scale at each checkpoint

AE_DEFAULT = TrainConfig(steps=1500, batch_size=64, lr=1e-3, ckpt_every=500)
LATENT_DEFAULT = TrainConfig(steps=4000, batch_size=128, lr=2e-3)
StageProgress = Callable[[str, int], Callable[[int, int, dict], None]]   # (stage, total) -> progress


@dataclass(frozen=True, eq=False)
class LatentCheckpoint:
    root: Path
    autoencoder: dict        # the autoencoder's config.json
    diffusion: dict          # the latent diffusion model's config.json
    latent_shape: tuple[int, ...]
    scale: float
    sample_shape: tuple[int, ...]   # the images'
    normalization: Normalization    # the images' map to model space

    @property
    def ae_dir(self) -> Path:
        return self.root / AE_DIR

    @property
    def latent_dir(self) -> Path:
        return self.root / LATENT_DIR


def is_latent_checkpoint(path: str | Path) -> bool:
    return (readable_dir(path) / MARKER).is_file()


def load_latent_checkpoint(path: str | Path) -> LatentCheckpoint:
    """Both stages' configs, checked against each other: the latent model must fit this autoencoder."""
    root = readable_dir(path)
    marker = read_json(root / MARKER, "latent-diffusion marker")
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or marker.get("version") != VERSION:
        raise GenccError(f"{str(root / MARKER)!r} is not a version-{VERSION} {FORMAT} marker: {short(marker)}")
    if not ckpt.is_checkpoint(root / LATENT_DIR):
        raise GenccError(f"latent-diffusion checkpoint {str(root)!r} has no trained {LATENT_DIR}/ stage yet; "
                         "finish training with --resume")
    ae_config, shape, scale = autoencoder_info(root / AE_DIR)
    diffusion = ckpt.load_config(root / LATENT_DIR)
    if diffusion["model"] != "diffusion" or tuple(diffusion["data"]["sample_shape"]) != shape:
        raise GenccError(f"{str(root / LATENT_DIR)!r} is a {diffusion['model']} model on shape "
                         f"{tuple(diffusion['data']['sample_shape'])}; its autoencoder's latent shape is {shape}")
    data = ae_config["data"]
    return LatentCheckpoint(root, ae_config, diffusion, shape, scale, tuple(data["sample_shape"]),
                            Normalization.from_dict(data["normalization"]))


def autoencoder_info(path: str | Path) -> tuple[dict, tuple[int, ...], float]:
    """(config, latent shape, latent scale) of an autoencoder checkpoint, or of a latent-diffusion
    checkpoint's autoencoder; anything else is refused by name."""
    path = Path(path)
    if is_latent_checkpoint(path):
        path = readable_dir(path) / AE_DIR
    if (path / "manifest.json").is_file():
        raise GenccError(f"{str(path)!r} is a compiled artifact; --autoencoder needs an autoencoder checkpoint "
                         "(from gencc train latent-diffusion)")
    config = ckpt.load_config(path)
    if config["model"] != "autoencoder":
        raise GenccError(f"{str(path)!r} is a {config['model']} checkpoint, not an autoencoder")
    latent = config.get("latent")
    net = config_from_dict(config["net"])
    ok = isinstance(latent, dict) and latent.get("shape") == list(net.latent_shape) and \
        isinstance(latent.get("scale"), float) and math.isfinite(latent["scale"]) and latent["scale"] > 0
    if not ok:
        raise GenccError(f"autoencoder {str(path)!r}: its 'latent' record must give shape {list(net.latent_shape)} "
                         f"and a positive finite scale, got {short(latent)}")
    return config, net.latent_shape, latent["scale"]


def load_autoencoder(path: str | Path) -> tuple[Autoencoder, dict]:
    """The trained autoencoder (eval mode, no grads) of an autoencoder checkpoint, and its config."""
    config, _, _ = autoencoder_info(path)
    path = readable_dir(path) / AE_DIR if is_latent_checkpoint(path) else Path(path)
    return load_net(path, config), config


def ae_config(sample_shape: tuple[int, ...], width: int | None = None, **options) -> AEConfig:
    """The autoencoder of a new run; `options` override AEConfig's other fields (studies only)."""
    if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2] or sample_shape[1] % 4:
        raise GenccError(f"the autoencoder needs square images with a side divisible by 4, got shape {sample_shape}")
    return AEConfig(channels=sample_shape[0], size=sample_shape[1], **({"width": width} if width else {}), **options)


class _AutoencoderRun(_Run):
    model = "autoencoder"
    sampled_net = Autoencoder
    saved_net, saved_state = "ae", {"opt": "opt"}

    def __init__(self, data: Dataset, cfg: TrainConfig, norm: Normalization, net_cfg: AEConfig, step: int = 0):
        super().__init__(data, cfg, norm, net_cfg, step)
        with _seeded(cfg.seed):
            self.ae = Autoencoder(net_cfg)
        self.opt = torch.optim.Adam(self.ae.parameters(), lr=cfg.lr)

    @classmethod
    def new(cls, data: Dataset, cfg: TrainConfig, width: int | None, options: dict | None = None):
        net_cfg = ae_config(tuple(data.data.shape[1:]), width, **(options or {}))
        return cls(data, cfg, Normalization.fit(data.data, "image"), net_cfg)

    def train_step(self, x: torch.Tensor, g: torch.Generator, labels: torch.Tensor | None = None) -> dict:
        losses = self.ae.loss(x, g)
        self.opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self._clip_and_step(self.ae.parameters(), self.opt, self.cfg.grad_clip)
        return {k: v.item() for k, v in losses.items()}

    def save(self, out: Path) -> None:
        scale = latent_scale(encode_means(self.ae.encoder, self.x[:SCALE_SUBSET].numpy()))
        config = {**self.config(), "latent": {"shape": list(self.net_cfg.latent_shape), "scale": scale}}
        ckpt.save_checkpoint(out, config, self.ae.state_dict(), {"step": self.step, "opt": self.opt.state_dict()})


def train_autoencoder(data: Dataset, out: str | Path, cfg: TrainConfig, *, width: int | None = None,
                      resume: bool = False, progress=None, options: dict | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) an autoencoder checkpoint on image data; `options`: AEConfig
    fields of a new run (a resumed run keeps its own)."""
    if data.kind != "image":
        raise GenccError(f"the autoencoder needs images; {data.name!r} holds vectors of shape {data.data.shape[1:]}")
    out = check_output(out, resume)
    if resume and out.exists():
        check_resume(out, "autoencoder", data, cfg, width=width)
        r = _AutoencoderRun.resume(out, data, cfg)
    else:
        r = _AutoencoderRun.new(data, cfg, width, options)
    return r.fit(out, progress)


def encode_dataset(data: Dataset, ae_path: str | Path) -> Dataset:
    """The images' scaled latents s * E(x), as the dataset the latent diffusion model learns."""
    model, config = load_autoencoder(ae_path)
    _check_image_shape(config, data, ae_path)
    norm = Normalization.from_dict(config["data"]["normalization"])
    z = encode_means(model.encoder, norm.encode(data.data)) * config["latent"]["scale"]
    # The latents' identity is the images': a float hash of z could differ between machines.
    return Dataset(z.astype(np.float32), data.labels, data.name, "image", digest=data_digest(data))


def train_latent_diffusion(data: Dataset, out: str | Path, ae_cfg: TrainConfig, cfg: TrainConfig, *,
                           autoencoder: str | Path | None = None, width: int | None = None,
                           ae_width: int | None = None, resume: bool = False,
                           progress: StageProgress | None = None,
                           weighting: LossWeighting | None = None) -> dict[str, TrainResult | None]:
    """Stage 1 trains the autoencoder (or copies `autoencoder`, an existing one); stage 2 trains the
    diffusion model on its latents. Each stage checkpoints and resumes on its own. The result's
    "autoencoder" is None when stage 1 had nothing to do (copied, or trained already)."""
    out = check_output(out, resume)
    if autoencoder is not None:   # a wrong --autoencoder fails before anything is written
        _check_image_shape(autoencoder_info(autoencoder)[0], data, autoencoder)
    _prepare(out)
    ae_dir, latent_dir = out / AE_DIR, out / LATENT_DIR
    if autoencoder is not None:
        ae_result = _adopt_autoencoder(autoencoder, ae_dir)
    elif ckpt.is_checkpoint(ae_dir) and ckpt.load_config(ae_dir)["step"] >= ae_cfg.steps:
        check_same_data(ae_dir, ckpt.load_config(ae_dir), data, ae_cfg.seed)   # what the latent stage encodes
        ae_result = None   # trained already: nothing to resume
    else:
        if ckpt.is_checkpoint(latent_dir):
            raise GenccError(f"{str(out)!r}: the latent stage has started, so its autoencoder is frozen at step "
                             f"{ckpt.load_config(ae_dir)['step']}; ask for at most that many --ae-steps")
        stage = progress("autoencoder", ae_cfg.steps) if progress else None
        ae_result = train_autoencoder(data, ae_dir, ae_cfg, width=ae_width, resume=ae_dir.exists(), progress=stage)
    latents = encode_dataset(data, ae_dir)
    if ckpt.is_checkpoint(latent_dir):
        _check_latent_shape(latent_dir, latents.data.shape[1:], ae_dir)
    identity = Normalization((0.0,), (1.0,), tuple(latents.data.shape[1:]))
    stage = progress("latent", cfg.steps) if progress else None
    result = train("diffusion", latents, latent_dir, cfg, width=width, resume=latent_dir.exists(),
                   progress=stage, normalization=identity, weighting=weighting)
    return {"autoencoder": ae_result, "latent": result}


def _check_image_shape(config: dict, data: Dataset, ae_path: str | Path) -> None:
    shape = tuple(data.data.shape[1:])
    if tuple(config["data"]["sample_shape"]) != shape:
        raise GenccError(f"autoencoder {str(ae_path)!r} was trained on images of shape "
                         f"{tuple(config['data']['sample_shape'])}; the data {data.name!r} has shape {shape}")


def _prepare(out: Path) -> None:
    if out.exists():
        if not is_latent_checkpoint(out):
            raise GenccError(f"{str(out)!r} exists and is not a latent-diffusion checkpoint; choose another --out")
        return
    out.mkdir()
    write_bytes_atomic(out / MARKER, (json.dumps({"format": FORMAT, "version": VERSION}) + "\n").encode())


def _adopt_autoencoder(src: str | Path, ae_dir: Path) -> None:
    """Copy an existing autoencoder in, so the checkpoint stays self-contained; never replace one."""
    src = Path(src)
    src = readable_dir(src) / AE_DIR if is_latent_checkpoint(src) else readable_dir(src)
    if ae_dir.exists():
        if src.resolve() != ae_dir.resolve() and not _same_weights(src, ae_dir):
            raise GenccError(f"{str(ae_dir.parent)!r} already has a different autoencoder; "
                             "drop --autoencoder to resume with it, or choose another --out")
        return None
    with atomic_dir(ae_dir) as tmp:
        for name in (ckpt.CONFIG, ckpt.WEIGHTS, ckpt.STATE):
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
    return None


def _same_weights(a: Path, b: Path) -> bool:
    return (a / ckpt.WEIGHTS).read_bytes() == (b / ckpt.WEIGHTS).read_bytes()


def _check_latent_shape(latent_dir: Path, shape: tuple[int, ...], ae_dir: Path) -> None:
    have = tuple(ckpt.load_config(latent_dir)["data"]["sample_shape"])
    if have != tuple(shape):
        raise GenccError(f"the latent model in {str(latent_dir)!r} works on shape {have}, but the autoencoder "
                         f"{str(ae_dir)!r} makes latents of shape {tuple(shape)}")
