"""Export a checkpoint's networks from torch to ONNX, each checked against torch with ONNX Runtime.

The functions and their inputs and outputs (names, order, shapes) are the artifact format's, defined once in
runtime/artifact.py (`signature`) and tabled in docs/ARTIFACT.md §3: eps, step (the fused sampler step of
docs/ARTIFACT.md §4), generator and, for MLPs, chain. Every batched tensor has the symbolic batch axis "batch"
(dim 0), and all are float32. Class-conditional checkpoints add labels and a guidance scale
(compiler/export_conditional.py).

The fused step evaluates eps = eps_theta(x, t) once, with t shared by the batch (so the time embedding is
computed once per call), and returns it together with the linear update. Euler-Maruyama, probability-flow
Euler and DDIM use (a, b, c, 0, 0); second-order and multistep solvers (Heun, DPM-Solver-2M, ...) pass the
previous state and the previous eps back in through x_prev and e_prev, so every solver runs the same graph
and the state never leaves the device between steps. chain.onnx runs L = CHAIN_LENGTH such steps of the
(a, b, c, 0, 0) kind in one call: for a tiny MLP the per-call overhead of the runtime is larger than the
network itself.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from gencc.runtime.artifact import BATCH, Dims, function_io
from gencc.runtime.atomic import check_output_path, write_bytes_atomic
from gencc.runtime.errors import GenccError

OPSET = 17                      # has every op these nets need; TVM's frontend and ORT both read it
CHAIN_LENGTH = 8                # steps per call of chain.onnx (MLPs only)
ATOL = 1e-4                     # float32 graphs of these sizes agree to ~1e-6; 1e-4 means a real bug

MakeInputs = Callable[[int], dict[str, np.ndarray]]


class FusedStep(nn.Module):
    """One network call plus the solver's linear update: the step contract of docs/ARTIFACT.md §4."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, coef: torch.Tensor, z: torch.Tensor,
                x_prev: torch.Tensor, e_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.net(x, t)
        return self.update(coef, x, eps, z, x_prev, e_prev), eps

    @staticmethod
    def update(coef: torch.Tensor, x, eps, z, x_prev, e_prev) -> torch.Tensor:
        # split, not coef[i]: ONNX Gather becomes TVM's unchecked "fast" take, which warns on every build
        a, b, c, d, e = coef.split(1)
        return a * x + b * eps + c * z + d * x_prev + e * e_prev


class ChainStep(nn.Module):
    """`length` x-only steps in one call, for tiny networks whose step costs less than a call's overhead:
    x <- c0_k x + c1_k eps_theta(x, t_k) + c2_k z_k for k = 0 .. length-1 (the loop is unrolled)."""

    def __init__(self, net: nn.Module, length: int):
        super().__init__()
        self.net, self.length = net, length

    def forward(self, x: torch.Tensor, ts: torch.Tensor, coefs: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
        # slices and split, not indexing: ONNX Gather becomes TVM's unchecked "fast" take (see FusedStep)
        for k, z in enumerate(zs.split(1, dim=1)):
            a, b, c = coefs[k:k + 1].reshape(3).split(1)
            x = a * x + b * self.net(x, ts[k:k + 1]) + c * z.squeeze(1)
        return x


def export_onnx(module: nn.Module, example_inputs: dict[str, torch.Tensor], path: str | Path,
                dynamic_batch_inputs: list[str], output_names: list[str]) -> None:
    """Write `module` as one self-contained ONNX file; every output gets the dynamic batch axis.

    Uses the TorchScript exporter (dynamo=False): it takes 1 s for the UNet where the dynamo exporter
    takes 4.6 s and prints a progress log, and its graphs import into TVM unchanged. Its deprecation
    warnings are silenced.
    """
    unknown = sorted(set(dynamic_batch_inputs) - set(example_inputs))
    if unknown:
        raise GenccError(f"dynamic batch inputs {unknown} are not among the inputs {list(example_inputs)}")
    axes = {name: {0: BATCH} for name in [*dynamic_batch_inputs, *output_names]}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)   # the exporter itself is deprecated, knowingly used
        # GroupNorm's training-only batch-size check; a trace that did specialise would fail the parity check
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        torch.onnx.export(module, tuple(example_inputs.values()), buf, input_names=list(example_inputs),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    model = onnx.load_model_from_string(buf.getvalue())
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise GenccError(f"exported ONNX for {path} is invalid: {str(e).splitlines()[0]}") from None
    write_bytes_atomic(path, buf.getvalue())


def random_inputs(inputs: list[dict], seed: int = 0) -> MakeInputs:
    """A make_inputs(batch) for the described inputs: N(0, 1) values, times uniform in [1e-3, 1].

    Times get their real range because sin(1000 t) for a large t would test float rounding, not the export.
    """
    def make(batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, batch])
        out = {}
        for spec in inputs:
            shape = [batch if d == BATCH else d for d in spec["shape"]]
            draw = rng.uniform(1e-3, 1.0, shape) if spec["name"] in ("t", "ts") else rng.standard_normal(shape)
            out[spec["name"]] = draw.astype(np.float32)
        return out
    return make


def check_onnx_against_torch(module: nn.Module, path: str | Path, make_inputs: MakeInputs,
                             batches: tuple[int, ...] = (1, 5), atol: float = ATOL) -> float:
    """Max abs difference between ONNX Runtime (CPU) and torch on make_inputs(b) for each batch b."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    err = 0.0
    for batch in batches:
        feeds = make_inputs(batch)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(v) for v in feeds.values()))
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        for got, want in zip(session.run(None, feeds), expected, strict=True):
            err = max(err, float(np.abs(got - want.numpy()).max()))
    if not err <= atol:   # also catches NaN
        raise GenccError(f"ONNX export {str(path)!r} differs from torch by {err:.3g} > {atol:g}")
    return err


def io_json(name: str, dims: Dims) -> tuple[list[dict], list[dict]]:
    """The JSON input and output descriptions of function `name` (runtime/artifact.py's `signature`)."""
    inputs, outputs = function_io(name, dims)
    return [s.to_json() for s in inputs], [s.to_json() for s in outputs]


def eps_io(shape: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions of eps.onnx for samples of `shape`."""
    return io_json("eps", Dims(state=_ints(shape)))


def step_io(shape: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions of step.onnx (the FusedStep contract) for samples of `shape`."""
    return io_json("step", Dims(state=_ints(shape)))


def chain_io(shape: tuple[int, ...], length: int) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions of chain.onnx: zs is (B, length, *shape), batch first like every input."""
    return io_json("chain", Dims(state=_ints(shape), chain_length=int(length)))


def generator_io(latent_dim: int, shape: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Input and output descriptions of generator.onnx."""
    return io_json("generator", Dims(sample_shape=_ints(shape), latent_shape=(int(latent_dim),)))


def _ints(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)   # config values may be numpy integers, which JSON cannot write


def export_function(module: nn.Module, path: str | Path, inputs: list[dict], outputs: list[dict],
                    rewrite: Callable[[Path], None] | None = None) -> dict:
    """Export `module` with the described inputs and outputs, check it against torch, describe it.

    `rewrite(path)` edits the written graph before the check (compiler/onnx_source.py splices a user's
    graph in there)."""
    path = Path(path)
    make_inputs = random_inputs(inputs)
    example = {k: torch.from_numpy(v) for k, v in make_inputs(2).items()}   # 2: a batch of 1 could be specialised
    batched = [s["name"] for s in inputs if s["shape"][:1] == [BATCH]]
    export_onnx(module, example, path, batched, [s["name"] for s in outputs])
    if rewrite is not None:
        rewrite(path)
    err = check_onnx_against_torch(module, path, make_inputs)
    return {"file": path.name, "inputs": inputs, "outputs": outputs, "max_abs_err_vs_torch": err}


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path) -> dict:
    """Export a checkpoint's sampling network(s) into out_dir; returns {name: description} per function.

    Diffusion checkpoints give "eps" (eps.onnx) and "step" (step.onnx), GAN checkpoints "generator".
    """
    from gencc.models import checkpoint as ckpt
    from gencc.models.factory import load_net

    config = ckpt.load_config(ckpt_dir)
    if config["model"] not in ("diffusion", "gan"):
        raise GenccError(f"checkpoint {str(ckpt_dir)!r} has unknown model kind {config['model']!r}; "
                         f"expected 'diffusion' or 'gan'")
    out_dir = _prepare_out_dir(out_dir)
    net = load_net(ckpt_dir, config)
    shape = tuple(config["data"]["sample_shape"])
    if net.cfg.num_classes:
        from .export_conditional import conditional_functions

        functions = conditional_functions(config["model"], net, shape)
    elif config["model"] == "gan":
        functions = {"generator": (net, generator_io(net.cfg.latent_dim, shape))}
    else:
        functions = {"eps": (net, eps_io(shape)), "step": (FusedStep(net), step_io(shape))}
        if config["net"].get("arch") == "mlp":   # tiny: several steps per call pay the call overhead once
            functions["chain"] = (ChainStep(net, CHAIN_LENGTH), chain_io(shape, CHAIN_LENGTH))
    return {name: export_function(module, out_dir / f"{name}.onnx", *io)
            for name, (module, io) in functions.items()}


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out_dir = check_output_path(out_dir, what="export folder", directory=True)
    out_dir.mkdir(exist_ok=True)
    return out_dir
