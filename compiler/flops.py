"""FLOPs of one call of an ONNX graph: 2 per multiply-add in MatMul, Gemm, Conv, ConvTranspose and Einsum.

Elementwise ops, normalisations and softmax are not counted: they are memory-bound and tiny next to the
contractions, and leaving them out is the usual convention for "achieved GFLOP/s" against a matmul peak.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import shape_inference

from gencc.runtime.errors import GenccError


def count_flops(model: onnx.ModelProto | str | Path, batch: int, symbolic: bool = False) -> int:
    """FLOPs of one call at `batch`, with every symbolic dimension bound to `batch`. `symbolic`: where
    ONNX's shape inference fails, ask ONNX Runtime's (the bench does; manifests keep ONNX's alone)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = _bind_batch(model, batch)
    # data_prop: the UNet reshapes with computed shapes (Shape -> Gather -> Concat); propagate them too.
    try:
        return _count(model, _shapes(shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)))
    except (shape_inference.InferenceError, GenccError) as e:
        # ONNX's own inference loses some shapes of exported diffusers UNets (the time embedding, attention);
        # ONNX Runtime's symbolic inference keeps them. Without it, the first reason stands: e.g. the guided
        # step's doubled batch, whose reshapes do not survive binding the batch axis.
        shapes = _symbolic_shapes(model) if symbolic else None
        if shapes is None:
            raise GenccError(f"cannot count FLOPs at batch {batch}: {_reason(e)}") from None
        return _count(model, shapes)


def _count(model: onnx.ModelProto, shapes: dict) -> int:
    return int(sum(_COUNTERS[n.op_type](n, shapes) for n in model.graph.node if n.op_type in _COUNTERS))


def _reason(e: Exception) -> str:
    if isinstance(e, GenccError):
        return str(e).removeprefix("cannot count FLOPs: ")
    return f"ONNX shape inference fails ({str(e).splitlines()[0][:200]})"


def _symbolic_shapes(model: onnx.ModelProto) -> dict | None:
    """Every static shape by ONNX Runtime's symbolic shape inference, or None where it fails or is absent."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return _shapes(SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False))
    except Exception:
        return None


def count_flops_or_none(model: onnx.ModelProto | str | Path, batch: int,
                        log: Callable[[str], None] = lambda s: None, symbolic: bool = False) -> int | None:
    """count_flops, or None (the reason goes to `log`) where ONNX shape inference cannot count them: the
    guided step's doubled batch, for one. Callers then go without: no thread policy, no GFLOP/s."""
    try:
        return count_flops(model, batch, symbolic)
    except GenccError as e:
        log(str(e))
        return None


def _bind_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in list(model.graph.input) + list(model.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.ClearField("dim_param")
                d.dim_value = batch
    return model


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.dim_value > 0 for d in dims):
            out[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _shape(shapes: dict, name: str, node) -> tuple[int, ...]:
    if name not in shapes:
        raise GenccError(f"cannot count FLOPs: shape of {name!r} (input of {node.op_type} {node.name!r}) is unknown")
    return shapes[name]


def _matmul(node, shapes) -> int:
    a = _shape(shapes, node.input[0], node)
    out = _shape(shapes, node.output[0], node)
    return 2 * math.prod(out) * a[-1]


def _gemm(node, shapes) -> int:
    a = _shape(shapes, node.input[0], node)
    trans_a = next((att.i for att in node.attribute if att.name == "transA"), 0)
    k = a[0] if trans_a else a[1]
    return 2 * math.prod(_shape(shapes, node.output[0], node)) * k


def _conv(node, shapes) -> int:
    w = _shape(shapes, node.input[1], node)            # (C_out, C_in / groups, kh, kw)
    out = _shape(shapes, node.output[0], node)         # (N, C_out, H_out, W_out)
    return 2 * math.prod(out) * math.prod(w[1:])


def _conv_transpose(node, shapes) -> int:
    x = _shape(shapes, node.input[0], node)            # (N, C_in, H, W)
    w = _shape(shapes, node.input[1], node)            # (C_in, C_out / groups, kh, kw)
    return 2 * math.prod(x) * math.prod(w[1:])


def _einsum(node, shapes) -> int:
    eq = next(att.s.decode() for att in node.attribute if att.name == "equation").replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    sizes = {}
    for term, name in zip(lhs, node.input, strict=False):
        for letter, dim in zip(term, _shape(shapes, name, node), strict=False):   # "..." terms are shorter
            sizes[letter] = dim
    return 2 * math.prod(sizes.values())


_COUNTERS = {"MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "ConvTranspose": _conv_transpose, "Einsum": _einsum}


def activation_bytes_per_sample(model: onnx.ModelProto | str | Path) -> int | None:
    """Bytes of the graph's largest intermediate (or output) tensor per sample, from ONNX shape inference at
    batch 2 (batch 1 could be specialised away): what sampling at batch B holds beside its state, a few
    times B times this (runtime/model.py's memory check). None where shape inference cannot tell."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    batch = 2
    try:
        inferred = shape_inference.infer_shapes(_bind_batch(model, batch), strict_mode=True, data_prop=True)
    except shape_inference.InferenceError:
        return None
    weights = {init.name for init in inferred.graph.initializer}
    sizes = [math.prod(s) for name, s in _shapes(inferred).items() if name not in weights]
    return -(-4 * max(sizes) // batch) if sizes else None   # float32: 4 bytes an element
