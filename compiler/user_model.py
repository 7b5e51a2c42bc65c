"""A user's own torch network, adapted and probed, ready to export into an artifact or to sample in torch.

`UserModel.prepare(net, options)` wraps the network in gencc's convention (models/adapters.py) and runs
it on probe inputs first, so a network that cannot be right is refused with one clear line before
anything is written: an output of another shape, NaN/inf values, or (diffusion) an output that does not
change with the time input at all. `export_into(folder)` then writes eps.onnx and step.onnx (or
generator.onnx) with the conversions traced into the same graphs, as compile_artifact expects.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gencc.models.adapters import EpsAdapter, LabelInput, output_tensor
from gencc.models.guidance import GuidedEps, one_hot
from gencc.runtime import artifact
from gencc.runtime.errors import GenccError
from gencc.runtime.jsonfile import one_line
from gencc.runtime.normalize import Normalization

from .export import FusedStep, _ints, eps_io, export_function, io_json, step_io
from .export_conditional import GuidedFusedStep, guided_eps_io, guided_step_io
from .options import CompileOptions

Log = Callable[[str], None]
PROBE_TIMES = (0.25, 0.75)   # two times the network must answer differently


@dataclass(frozen=True)
class UserModel:
    """An adapted network (the eps-adapter or the generator), its options, and where it came from."""

    module: nn.Module
    options: CompileOptions
    sample_shape: tuple[int, ...]
    source: dict                  # recorded in the manifest: {"kind": "torch-module" | "onnx" | "diffusers", ...}
    sde: object | None = None     # diffusion: the schedule's SDE (runtime/sde.py)

    @classmethod
    def prepare(cls, net: nn.Module, options: CompileOptions, source: dict | None = None) -> UserModel:
        """Adapt and probe `net`; raises GenccError naming the problem."""
        if not isinstance(net, nn.Module):
            raise GenccError(f"expected a torch.nn.Module, got {type(net).__name__}")
        net = net.eval().requires_grad_(False)
        source = source or {"kind": "torch-module", "class": type(net).__name__}
        if options.kind == "gan":
            if options.num_classes:
                raise GenccError("class-conditional user generators are not supported yet (diffusion networks are)")
            shape = _probe_generator(net, options)
            return cls(net, options, shape, source)
        if options.sample_shape is None:
            raise GenccError("a diffusion network needs sample_shape (--shape), the shape of one sample, e.g. 1,8,8")
        sde = options.sde()
        if options.num_classes:
            net = LabelInput(net, options.label_input)
        adapter = EpsAdapter(net, sde, options.time, options.prediction_kind).eval()
        _probe_eps(adapter, options.sample_shape, sde, options.num_classes)
        return cls(adapter, options, options.sample_shape, source, sde)

    def export_into(self, folder: Path, log: Log) -> tuple[artifact.Manifest, dict]:
        """Write the ONNX functions into `folder`; returns the model's description and the functions'
        (what compile_artifact reads from an export folder)."""
        functions = {name: _export(module, folder / f"{name}.onnx", io) for name, (module, io) in self._functions()}
        for f in functions.values():
            log(f"exported {f['file']} (ONNX Runtime vs torch: max abs err {f['max_abs_err_vs_torch']:.2g})")
        gan = self.options.kind == "gan"
        about = {"data": "", "source": self.source}
        return artifact.Manifest(
            model=self.options.kind, sample_shape=tuple(self.sample_shape), normalization=identity(self.sample_shape),
            latent_shape=_ints(self.options.latent_shape) if gan else (), sde=None if gan else self.sde,
            num_classes=self.options.num_classes,
            info=about if gan else {**about, "conventions": self.options.conventions()}), functions

    def _functions(self) -> list[tuple[str, tuple[nn.Module, tuple]]]:
        if self.options.kind == "gan":
            latent = self.options.latent_shape
            dims = artifact.Dims(sample_shape=_ints(self.sample_shape), latent_shape=_ints(latent))
            return [("generator", (self.module, io_json("generator", dims)))]
        k, shape = self.options.num_classes, self.sample_shape
        if k:   # guidance inside the graph, as for gencc's own conditional checkpoints
            return [("eps", (GuidedEps(self.module, k, shape, shared_t=False), guided_eps_io(shape, k))),
                    ("step", (GuidedFusedStep(self.module, k, shape), guided_step_io(shape, k)))]
        return [("eps", (self.module, eps_io(shape))), ("step", (FusedStep(self.module), step_io(shape)))]


def identity(shape: tuple[int, ...]) -> Normalization:
    """A user's network works in its own units: samples come out as the network makes them."""
    return Normalization((0.0,), (1.0,), tuple(shape))


def _export(module: nn.Module, path: Path, io: tuple) -> dict:
    # A user's code may branch on sizes (diffusers does): the tracer's warnings about it are noise here,
    # since the export is checked against torch at two batch sizes and a specialised trace fails that.
    with _export_errors(), warnings.catch_warnings(), _torch_log_silenced():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return export_function(module, path, *io, rewrite=_splicer(module))


def _splicer(module: nn.Module) -> Callable[[Path], None] | None:
    """For a network from an ONNX file: put its nodes in place of the exported placeholder."""
    from .onnx_source import OnnxNet, splice

    net = next((m for m in module.modules() if isinstance(m, OnnxNet)), None)
    return None if net is None else (lambda path: splice(path, net))


@contextlib.contextmanager
def _torch_log_silenced() -> Iterator[None]:
    """Keep the exporter's C++ log off stdout: on an unsupported operator it prints the whole TorchScript
    graph there, whatever `verbose` says (torch 2.13's setup_onnx_logging tests the function
    _jit_is_onnx_log_enabled, not its result), and the error already names the operator."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _export_errors() -> Iterator[None]:
    """A network the ONNX exporter cannot write: one line that names the operator."""
    try:
        yield
    except GenccError:
        raise
    except Exception as e:   # the exporter raises many types (UnsupportedOperatorError, RuntimeError, ...)
        raise GenccError(f"the network does not export to ONNX: {type(e).__name__}: {one_line(e)}") from None


def _run(what: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Run a probe; an exception inside the user's network becomes one line saying which probe failed."""
    try:
        with torch.no_grad():
            return output_tensor(fn())
    except GenccError:
        raise
    except Exception as e:   # whatever the user's forward raises
        raise GenccError(f"the network failed on {what}: {type(e).__name__}: {one_line(e)}") from None


def _probe_eps(adapter: EpsAdapter, shape: tuple[int, ...], sde, num_classes: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *shape), generator=g)
    label = (one_hot(torch.tensor([0, num_classes]), num_classes + 1),) if num_classes else ()   # class 0, null
    outs = {}
    for t in (float(sde.t_eps), *PROBE_TIMES, 1.0):
        what = f"a probe input of shape {tuple(x.shape)} at t={t:g}"
        raw = _run(what, lambda t=t: adapter.network_output(x, torch.full((2,), t), *label))
        _check_output(raw, x.shape, what)
        eps = _run(what, lambda t=t: adapter(x, torch.full((2,), t), *label))
        _check_output(eps, x.shape, what + f" after the {adapter.prediction} -> eps conversion")
        outs[t] = raw
    if torch.equal(outs[PROBE_TIMES[0]], outs[PROBE_TIMES[1]]):
        raise GenccError(f"the network's output is identical at t={PROBE_TIMES[0]} and t={PROBE_TIMES[1]} "
                         f"(time input {adapter.time_input}): it ignores its time input, or the time input "
                         "convention is wrong (see --time-input)")


def _probe_generator(net: nn.Module, options: CompileOptions) -> tuple[int, ...]:
    z = torch.randn((2, *options.latent_shape), generator=torch.Generator().manual_seed(0))
    what = f"a probe z of shape {tuple(z.shape)}"
    out = _run(what, lambda: net(z))
    if out.dim() < 2 or out.shape[0] != 2:
        raise GenccError(f"the generator's output on {what} has shape {tuple(out.shape)}; expected (2, *sample_shape)")
    shape = tuple(out.shape[1:])
    if options.sample_shape is not None and shape != options.sample_shape:
        raise GenccError(f"the generator's output has sample shape {shape}, not the sample_shape "
                         f"{options.sample_shape} given")
    _check_output(out, out.shape, what)
    return shape


def _check_output(out: torch.Tensor, shape, what: str) -> None:
    if tuple(out.shape) != tuple(shape):
        raise GenccError(f"the network's output on {what} has shape {tuple(out.shape)}; "
                         f"an eps-network must return its input's shape {tuple(shape)}")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise GenccError(f"the network's output on {what} has {bad} NaN/inf values")
