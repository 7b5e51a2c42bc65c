"""Torch backend: a checkpoint's sampling weights (EMA eps-network or generator) as a runtime Model.

It lives next to the models because it builds their networks; the runtime never imports it, and its
loader finds it by name (runtime/loader.py), so the runtime stays importable without torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gencc.models import checkpoint as ckpt
from gencc.models.factory import config_from_dict, load_net
from gencc.runtime.backend import Functions
from gencc.runtime.errors import GenccError
from gencc.runtime.kinds import Kind
from gencc.runtime.model import DiffusionModel, GanModel, LatentDiffusionModel, Model
from gencc.runtime.normalize import Normalization
from gencc.runtime.sde import VPSDE, sde_from_dict
from gencc.runtime.threads import torch_threads

NAME = "torch"


def load_checkpoint(path: str | Path, device: str = "cpu") -> Model:
    config = ckpt.load_config(path)
    if config["model"] == "autoencoder":
        raise GenccError(f"{str(path)!r} is an autoencoder checkpoint; it samples nothing on its own "
                         "(train latent diffusion on it: gencc train latent-diffusion --autoencoder)")
    kind = Kind(config["model"])
    net_cfg = config_from_dict(config["net"])
    norm = Normalization.from_dict(config["data"]["normalization"])
    shape = tuple(config["data"]["sample_shape"])
    net = load_net(path, config)   # checked against the weights' header before it is built
    sde = sde_from_dict(config["sde"]) if kind is Kind.DIFFUSION else None
    latent = getattr(net_cfg, "latent_dim", None)
    return model_from_net(kind, net, shape, norm, sde=sde, latent_dim=latent, info=config,
                          data_name=config["data"]["name"], device=device,
                          num_classes=getattr(net_cfg, "num_classes", 0))


def model_from_net(kind: str, net, shape: tuple[int, ...], norm: Normalization, *, sde: VPSDE | None = None,
                   latent_dim: int | None = None, info: dict | None = None, data_name: str = "",
                   device: str = "cpu", num_classes: int = 0) -> Model:
    """A Model over an in-memory eps-network or generator (which this puts in eval mode).

    `latent_dim`: a GAN's z, an int (gencc's flat latents) or a shape tuple (a user's, e.g. (100, 1, 1))."""
    net = net.to(device).eval().requires_grad_(False)

    def to_torch(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)

    if Kind(kind) is Kind.GAN:
        latent = tuple(latent_dim) if isinstance(latent_dim, (tuple, list)) else (latent_dim,)

        @torch.inference_mode()
        def generate_fn(z: np.ndarray, *y: np.ndarray) -> np.ndarray:
            return net(to_torch(z), *map(to_torch, y)).cpu().numpy()
        return GanModel(shape, norm, Functions(NAME, generate_fn=generate_fn), latent_shape=latent,
                        info=info or {}, data_name=data_name, num_classes=num_classes, around_sample=torch_threads,
                        activation_bytes=activation_bytes(net, torch.zeros(2, *latent, device=device)))

    if num_classes:   # the callables also take one-hot labels (runtime/conditioning.py)
        from gencc.models.guidance import GuidedEps

        guided = GuidedEps(net, num_classes, shape, shared_t=False).to(device)

    @torch.inference_mode()
    def eps_fn(x: np.ndarray, t: float, *cond) -> np.ndarray:
        """cond: (y one-hot rows, w) for conditional checkpoints: the guided eps, as compiled artifacts compute it."""
        t = torch.full((len(x),), t, dtype=torch.float32, device=device)
        if not cond:
            return net(to_torch(x), t).cpu().numpy()
        y, w = cond
        return guided(to_torch(x), t, to_torch(y), to_torch(np.array([w]))).cpu().numpy()

    # guidance runs the conditional and the null branch in one doubled batch
    activations = activation_bytes(net, torch.zeros(2, *shape, device=device), torch.full((2,), 0.5, device=device))
    return DiffusionModel(shape, norm, Functions(NAME, eps_fn=eps_fn), sde=sde, info=info or {},
                          data_name=data_name, num_classes=num_classes, around_sample=torch_threads,
                          activation_bytes=activations * (2 if num_classes else 1))


def activation_bytes(net, *inputs) -> int:
    """The largest tensor any module of `net` gives on `inputs` (a batch of 2), in bytes per sample: what
    Model's memory check counts for the network's activations; 0 (unknown) where the call fails."""
    largest = 0

    def hook(_module, _args, out):
        nonlocal largest
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor):
                largest = max(largest, o.numel() * o.element_size())

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.inference_mode():
            net(*inputs)
    except Exception:   # a measurement only: the sampler's own calls report real errors
        return 0
    finally:
        for h in handles:
            h.remove()
    return -(-largest // 2)


def load_latent_checkpoint(path: str | Path, device: str = "cpu") -> Model:
    """A latent-diffusion checkpoint (models/latent.py): its latent eps-network, then its decoder."""
    from gencc.models.latent import load_autoencoder, load_latent_checkpoint as load_config

    lc = load_config(path)
    diffusion = load_checkpoint(lc.latent_dir, device)
    decoder = load_autoencoder(lc.ae_dir)[0].decoder.to(device)

    @torch.inference_mode()
    def decode_fn(z: np.ndarray) -> np.ndarray:
        return decoder(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(device)).cpu().numpy()

    return LatentDiffusionModel(
        lc.sample_shape, lc.normalization, Functions(NAME, eps_fn=diffusion.net.eps, decode_fn=decode_fn),
        sde=diffusion.sde, latent_shape=lc.latent_shape, latent_scale=lc.scale,
        info={"autoencoder": lc.autoencoder, "latent": lc.diffusion}, data_name=lc.autoencoder["data"]["name"],
        around_sample=torch_threads,
        activation_bytes=max(diffusion.activation_bytes,
                             activation_bytes(decoder, torch.zeros(2, *lc.latent_shape, device=device))))
