"""Export a latent-diffusion checkpoint (models/latent.py): the latent eps-network and fused step, as for
any diffusion model, plus the autoencoder's decoder as a fourth ONNX function:

  decoder.onnx   z (B, *latent_shape) -> x (B, *sample_shape)        (model space, unscaled latent)

The runtime divides the latent state by the manifest's `latent_scale` before calling the decoder, so
the scale stays a recorded number rather than a constant folded into a graph.
"""
from __future__ import annotations

from pathlib import Path

from gencc.runtime.artifact import Dims, Manifest
from gencc.runtime.errors import GenccError
from gencc.runtime.sde import sde_from_dict

from .export import FusedStep, _ints, _prepare_out_dir, eps_io, export_function, io_json, step_io


def decoder_io(latent_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions of decoder.onnx."""
    return io_json("decoder", Dims(sample_shape=_ints(shape), latent_shape=_ints(latent_shape)))


def export_latent_checkpoint(root: str | Path, out_dir: str | Path) -> dict:
    """Export into out_dir; returns {name: description} for "eps", "step" and "decoder"."""
    from gencc.models.factory import load_net
    from gencc.models.latent import load_autoencoder, load_latent_checkpoint

    lc = load_latent_checkpoint(root)
    out_dir = _prepare_out_dir(out_dir)
    net = load_net(lc.latent_dir, lc.diffusion)
    decoder = load_autoencoder(lc.ae_dir)[0].decoder
    functions = {"eps": (net, eps_io(lc.latent_shape)), "step": (FusedStep(net), step_io(lc.latent_shape)),
                 "decoder": (decoder, decoder_io(lc.latent_shape, lc.sample_shape))}
    return {name: export_function(module, out_dir / f"{name}.onnx", *io)
            for name, (module, io) in functions.items()}


def describe_latent(root: str | Path, functions: dict) -> Manifest:
    """The model fields an export and an artifact manifest share (runtime/artifact.py), without functions."""
    from gencc.models.latent import load_latent_checkpoint

    lc = load_latent_checkpoint(root)
    if set(functions) != {"eps", "step", "decoder"}:
        raise GenccError(f"a latent-diffusion export needs eps, step and decoder, got {sorted(functions)}")
    return Manifest(model="latent-diffusion", sample_shape=tuple(lc.sample_shape), normalization=lc.normalization,
                    latent_shape=tuple(lc.latent_shape), latent_scale=float(lc.scale),
                    sde=sde_from_dict(lc.diffusion["sde"]),
                    info={"data": lc.autoencoder["data"]["name"],
                          "source": {"checkpoint_step": lc.diffusion["step"], "net": lc.diffusion["net"],
                                     "autoencoder_step": lc.autoencoder["step"],
                                     "autoencoder_net": lc.autoencoder["net"]}})
