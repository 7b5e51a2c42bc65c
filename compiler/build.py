"""Compile an exported ONNX function into a TVM library for the host CPU (llvm) or CUDA, and check it.

ONNX -> Relax (`from_onnx`) -> a per-target pipeline -> `tvm.compile` -> one shared library whose
VM function `main` takes the ONNX inputs in their order and shapes, with the batch axis left dynamic.
A CPU library is checked against ONNX Runtime on the same inputs (`run_parity`), as TVM's own
frontend tests do; a CUDA library is cross-compiled here and needs a GPU machine to be checked.
"""
from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_stages
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import dlight as dl

from gencc.compiler import cpu_schedules, winograd
from gencc.runtime.atomic import atomic_path, check_output_path
from gencc.runtime.errors import GenccError

TARGETS = ("llvm", "cpu", "cuda")          # "cpu" is an alias of "llvm": the host CPU
DEFAULT_CUDA_ARCH = "sm_90"                # Hopper (H100/H200); pass arch="sm_80" for A100, "sm_89" for L4/4090
CUDA_ARCH = re.compile(r"sm_\d{2,3}[a-z]?")
ATOL = 1e-4
PIPELINES = {   # recorded in each build's description
    "llvm": "sigmoid and ConvTranspose rewrites, IHWO conv weights, FastMathTransform, CPU default passes "
            "+ gencc CPU schedules (untuned)",
    "cuda": "zero pipeline, DLight GPU schedules (Matmul, GEMV, Reduction, GeneralReduction, Fallback)",
}

# Conv weights with the output channel innermost, so cpu_schedules.Contraction vectorises a conv over its
# 32-64 output channels instead of an 8- or 4-wide image row; the data stays NCHW, as GroupNorm's reshapes
# need. The weights are constants: FoldConstant transposes them once, at build time.
CONV_LAYOUT = {"relax.nn.conv2d": ["NCHW", "IHWO"]}

MakeInputs = Callable[[int], dict[str, np.ndarray]]


def resolve_target(target: str, arch: str | None = None) -> tuple[tvm.target.Target, dict]:
    """The TVM target for a target name, and its JSON description for a manifest."""
    if target in ("llvm", "cpu"):
        if arch is not None:
            raise GenccError(f"arch {arch!r} only applies to the cuda target, not {target!r}")
        # The build machine's CPU: the library uses its vector units and may not run on an older CPU.
        desc = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    elif target == "cuda":
        arch = DEFAULT_CUDA_ARCH if arch is None else arch
        if not isinstance(arch, str) or not CUDA_ARCH.fullmatch(arch):
            raise GenccError(f"invalid CUDA arch {arch!r}; expected a compute capability like 'sm_90' or 'sm_80'")
        desc = {"kind": "cuda", "arch": arch}
    else:
        raise GenccError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return tvm.target.Target(desc), desc


def rewrite_sigmoid(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a float32 model with every Sigmoid(x) written as Reciprocal(1 + Exp(-x)).

    TVM lowers sigmoid to a scalar expf per element; exp alone is swapped by FastMathTransform for a
    vectorisable polynomial (which clamps its argument), making SiLU 9x faster on a 1024x256 tensor.
    Where exp(-x) overflows to inf, 1/inf = 0 is still the right limit.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    one = _unique_name(graph, "gencc_sigmoid_one")
    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Sigmoid":
            nodes.append(node)
            continue
        p = f"{one}_{i}"
        nodes += [helper.make_node("Neg", [node.input[0]], [f"{p}_neg"], name=f"{p}_neg"),
                  helper.make_node("Exp", [f"{p}_neg"], [f"{p}_exp"], name=f"{p}_exp"),
                  helper.make_node("Add", [f"{p}_exp", one], [f"{p}_add"], name=f"{p}_add"),
                  helper.make_node("Reciprocal", [f"{p}_add"], [node.output[0]], name=f"{p}_rcp")]
    if len(nodes) == len(graph.node):
        return model
    graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), one))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def rewrite_conv_transpose(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model with each stride-s ConvTranspose written as Conv then DepthToSpace (sub-pixel conv).

    Output row s*m + r of a transposed conv sums only the taps k = s*d + r + pad_begin (input row m - d),
    so the s*s output phases are one ordinary conv with s*s*C_out channels over the undilated input,
    interleaved by DepthToSpace. TVM instead legalises ConvTranspose as a scalar conv over a zero-stuffed
    input with the kernel flipped on every call: 22 ms of the UNet step's 55 ms at batch 64. The price is
    the phases' zero taps (a 4x4 kernel at stride 2 becomes a 3x3 conv, 9 taps for 4). Only ConvTransposes
    whose output is exactly s times the input (kernel + output_padding - pads == s, the usual 2x
    upsampling) with constant weights, no groups and no dilation are rewritten.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    nodes, changed = [], False
    for node in graph.node:
        plan = _sub_pixel_plan(node, weights)
        if plan is None:
            nodes.append(node)
            continue
        s, w, b, pads = plan
        conv_w, conv_out = _unique_name(graph, f"{node.name}_subpixel_w"), f"{node.output[0]}_subpixel"
        graph.initializer.append(numpy_helper.from_array(w, conv_w))
        inputs = [node.input[0], conv_w]
        if b is not None:
            inputs.append(_unique_name(graph, f"{node.name}_subpixel_b"))
            graph.initializer.append(numpy_helper.from_array(b, inputs[-1]))
        nodes += [helper.make_node("Conv", inputs, [conv_out], name=f"{node.name}_subpixel", pads=pads),
                  helper.make_node("DepthToSpace", [conv_out], [node.output[0]], name=f"{node.name}_d2s",
                                   blocksize=s, mode="DCR")]
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return model


def fold_pad_widths(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model with each Pad's widths, when computed from constants alone, as one initializer.

    torch exports an asymmetric F.pad (diffusers' Downsample2D with downsample_padding=0, as in DDPM's
    CIFAR-10 UNet) as a chain of Constant, ConstantOfShape, Concat, Reshape, Slice(step -1), Transpose
    and Cast into Pad's `pads`: torch cannot fold a negative-step Slice, and TVM's importer refuses a
    Pad whose widths are not a constant ("Dynamic pads are not supported yet"). The chain is integer
    arithmetic, evaluated here exactly with ONNX's reference evaluator; other inputs are not touched.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    changed = False
    for node in graph.node:
        if node.op_type != "Pad" or len(node.input) < 2 or node.input[1] in consts:
            continue
        chain = _constant_chain(node.input[1], producer, consts)
        if chain is None:
            continue
        from onnx.reference import ReferenceEvaluator

        needed = {i for n in chain for i in n.input} & consts.keys()
        out = helper.make_tensor_value_info(node.input[1], TensorProto.INT64, None)
        sub = helper.make_graph(chain, "pads", [], [out], initializer=[consts[i] for i in needed])
        pads = ReferenceEvaluator(helper.make_model(sub, opset_imports=model.opset_import)).run(None, {})[0]
        name = _unique_name(graph, f"{node.name}_pads")
        graph.initializer.append(numpy_helper.from_array(np.asarray(pads, np.int64), name))
        node.input[1] = name
        changed = True
    if changed:   # the chains' nodes are now dead; TVM's importer would still convert them
        live, kept = {o.name for o in graph.output}, []
        for n in reversed(graph.node):
            if any(o in live for o in n.output):
                kept.append(n)
                live.update(n.input)
        del graph.node[:]
        graph.node.extend(reversed(kept))
    return model


def _constant_chain(name: str, producer: dict, consts: dict, limit: int = 64) -> list | None:
    """The nodes that compute `name` from initializers and Constant nodes alone (in graph order), or None."""
    chain, todo, seen = [], [name], set()
    while todo:
        value = todo.pop()
        if value in seen or value in consts or value == "":
            continue
        seen.add(value)
        n = producer.get(value)
        if n is None or len(chain) >= limit:
            return None   # a graph input, or too long to be a widths computation
        chain.append(n)
        todo.extend(n.input)
    order = {id(n): i for i, n in enumerate(producer.values())}
    return sorted({id(n): n for n in chain}.values(), key=lambda n: order[id(n)])


def _sub_pixel_plan(node: onnx.NodeProto, weights: dict) -> tuple | None:
    """(stride, conv weight, conv bias, conv pads) for a ConvTranspose that rewrite_conv_transpose handles."""
    if node.op_type != "ConvTranspose" or node.input[1] not in weights:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    has_bias = len(node.input) > 2 and node.input[2] != ""
    strides = list(attrs.get("strides", [1, 1]))
    if (attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or "output_shape" in attrs
            or len(strides) != 2 or strides[0] != strides[1] or strides[0] < 2
            or (has_bias and node.input[2] not in weights)):
        return None
    s, w = strides[0], numpy_helper.to_array(weights[node.input[1]])       # w: (C_in, C_out, K_h, K_w)
    pads, out_pad = list(attrs.get("pads", [0, 0, 0, 0])), list(attrs.get("output_padding", [0, 0]))
    taps = [_phase_taps(w.shape[2 + a], s, pads[a], pads[2 + a], out_pad[a]) for a in (0, 1)]
    if None in taps:
        return None
    bias = np.tile(numpy_helper.to_array(weights[node.input[2]]), s * s) if has_bias else None
    (tap_h, lo_h, hi_h), (tap_w, lo_w, hi_w) = taps
    return s, _sub_pixel_weight(w, tap_h, tap_w), bias, [hi_h, hi_w, -lo_h, -lo_w]


def _sub_pixel_weight(w: np.ndarray, tap_h: np.ndarray, tap_w: np.ndarray) -> np.ndarray:
    """The conv weight (s*s*C_out, C_in, T_h, T_w), channels in DepthToSpace's (phase_h, phase_w, c) order."""
    s, c_out = len(tap_h), w.shape[1]
    conv = np.zeros((s, s, c_out, w.shape[0], tap_h.shape[1], tap_w.shape[1]), w.dtype)
    for rh, rw, th, tw in np.ndindex(s, s, tap_h.shape[1], tap_w.shape[1]):
        if tap_h[rh, th] >= 0 and tap_w[rw, tw] >= 0:   # a tap no input reaches stays zero
            conv[rh, rw, :, :, th, tw] = w[:, :, tap_h[rh, th], tap_w[rw, tw]].T
    return conv.reshape(s * s * c_out, *conv.shape[3:])


def _phase_taps(k: int, s: int, pad_begin: int, pad_end: int, out_pad: int) -> tuple | None:
    """Per output phase r, the kernel tap each conv tap t reads (-1: none), and the range of offsets d.

    Output s*m + r reads input m - d through kernel tap s*d + r + pad_begin; conv tap t = d_max - d.
    """
    if k + out_pad - pad_begin - pad_end != s:
        return None   # the output is not s times the input: the phases would need cropping
    ds = [[d for d in range(-k, k + 1) if 0 <= s * d + r + pad_begin < k] for r in range(s)]
    lo, hi = min(min(d) for d in ds if d), max(max(d) for d in ds if d)
    if lo > 0 or hi < 0:
        return None   # a conv would need negative padding
    taps = np.full((s, hi - lo + 1), -1)
    for r in range(s):
        for d in ds[r]:
            taps[r, hi - d] = s * d + r + pad_begin
    return taps, lo, hi


def build(onnx_path: str | Path, target: str, arch: str | None, out_so: str | Path) -> dict:
    """Compile one ONNX function into out_so (written atomically); returns a description with timings."""
    onnx_path, out_so = Path(onnx_path), Path(out_so)
    tvm_target, desc = resolve_target(target, arch)
    model = _load_onnx(onnx_path)
    check_output_path(out_so, what="library")
    start = time.perf_counter()
    with _tvm_errors(f"importing {onnx_path.name} into TVM"):
        mod = import_onnx(model, desc["kind"])
    imported = time.perf_counter()
    with _tvm_errors(f"compiling {onnx_path.name} for {desc}"):
        ex = _compile_llvm(mod, tvm_target) if desc["kind"] == "llvm" else _compile_cuda(mod, tvm_target)
    compiled = time.perf_counter()
    with _tvm_errors(f"linking {out_so.name}"), atomic_path(out_so) as tmp:
        ex.export_library(str(tmp))   # any name but *.tar / *.wasm links a shared library
        tmp.chmod(0o755)
    done = time.perf_counter()
    return {"file": out_so.name, "source": onnx_path.name, "target": desc, "pipeline": PIPELINES[desc["kind"]],
            "seconds": {"import": round(imported - start, 3), "compile": round(compiled - imported, 3),
                        "export": round(done - compiled, 3), "total": round(done - start, 3)}}


def import_onnx(model: onnx.ModelProto, kind: str) -> tvm.IRModule:
    model = fold_pad_widths(model)
    if kind == "llvm":
        model = rewrite_conv_transpose(rewrite_sigmoid(model))
    # Weights become constants, so FoldConstant pre-transposes them once at build time.
    return from_onnx(model, keep_params_in_input=False)


def llvm_passes(target: tvm.target.Target, tuning_db: str | None = None) -> list[tvm.transform.Pass]:
    """The llvm Relax pipeline, in order (run it inside `with target:`).

    relax.get_default_pipeline(llvm) plus three gencc stages: conv weights laid out IHWO before
    legalisation, gencc's CPU schedules after fusion, and a fix-up for TVM's alias information. No
    pipeline schedules CPU kernels (tvm.compile's own "default" does not even fuse or fold constants):
    unscheduled, the batch-1024 MLP step ran 35x slower and the UNet step 10x slower. The stages come
    from the backend module: relax.pipeline.dataflow_lower_passes(llvm) is broken in TVM 0.27.
    `tuning_db`: a MetaSchedule database whose best schedules replace the default ones (compiler/tune.py).
    """
    from_db = [relax.transform.MetaScheduleApplyDatabase(tuning_db)] if tuning_db else []
    return (llvm_kernel_passes(target) + from_db + [dl.ApplyDefaultSchedule(*cpu_schedules.RULES)]
            + cpu_stages.dataflow_lower_passes(target) + cpu_stages.finalize_passes(target)
            + [_mark_shape_funcs_noalias])


def llvm_kernel_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """The llvm pipeline up to the fused, unscheduled kernels: what gets scheduled, and what is tuned."""
    return ([winograd.Winograd3x3(), relax.transform.ConvertLayout(CONV_LAYOUT), relax.transform.FastMathTransform()]
            + cpu_stages.library_dispatch_passes(target) + cpu_stages.legalize_passes(target))


def _compile_llvm(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    with target:
        mod = tvm.transform.Sequential(llvm_passes(target))(mod)
    return tvm.compile(mod, target=target, relax_pipeline=None)


@tvm.transform.module_pass(opt_level=0, name="MarkShapeFuncsNoAlias")
def _mark_shape_funcs_noalias(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Mark VMShapeLower's one-buffer shape functions `tirx.noalias`, as every kernel already is.

    TVM 0.27's LLVM codegen drops per-buffer alias information for the whole module when one function
    lacks the attribute (every access gets the same TBAA tag): LLVM then could not keep a tile's
    accumulators in registers, and the dynamic-batch MLP's 256x256 matmuls ran 2.6x slower. A function
    with a single buffer parameter cannot alias.
    """
    mod = mod.clone()
    for gv, f in list(mod.functions.items()):
        if isinstance(f, tirx.PrimFunc) and len(f.params) == 1 and not f.attrs.get("tirx.noalias"):
            mod[gv] = f.with_attr("tirx.noalias", True)
    return mod


def _compile_cuda(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    # get_default_pipeline(cuda) fails on dynamic-batch models ("The function body is expected to be
    # the root block"), and unscheduled kernels fail with "Did you forget to bind?": legalise and fuse
    # with the zero pipeline, then give every kernel a DLight GPU schedule.
    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return tvm.compile(mod, target=target)


def run_parity(so_path: str | Path, onnx_path: str | Path, make_inputs: MakeInputs,
               batches: tuple[int, ...] = (1, 5), atol: float = ATOL, device=None) -> float:
    """Max abs difference between a library on `device` (default: the CPU) and ONNX Runtime's CPU run
    of its graph, on make_inputs(b) for each batch b."""
    import onnxruntime as ort
    from tvm.runtime.vm import VirtualMachine

    dev = device or tvm.cpu()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with _tvm_errors(f"loading {Path(so_path).name}"):
        main = VirtualMachine(tvm.runtime.load_module(str(so_path)), dev)["main"]
    err = 0.0
    for batch in batches:
        feeds = make_inputs(batch)
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i.name]), device=dev) for i in session.get_inputs()]
        with _tvm_errors(f"running {Path(so_path).name} at batch {batch}"):
            got = _outputs(main(*args))
        for g, want in zip(got, session.run(None, feeds), strict=True):
            err = max(err, float(np.abs(g - want).max()))
    if not err <= atol:   # also catches NaN
        raise GenccError(f"TVM library {str(so_path)!r} differs from ONNX Runtime by {err:.3g} > {atol:g} on {dev}")
    return err


def _outputs(out) -> list[np.ndarray]:
    """A VM result as numpy arrays: one tensor, or a tuple (Array) of them for multi-output functions."""
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise GenccError(f"ONNX file {str(path)!r} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and others for a corrupt file
        raise GenccError(f"ONNX file {str(path)!r} is corrupt: {type(e).__name__}: {e}".splitlines()[0]) from None


def _unique_name(graph: onnx.GraphProto, name: str) -> str:
    taken = {i.name for i in graph.initializer} | {v for n in graph.node for v in (*n.input, *n.output)}
    while name in taken:
        name += "_"
    return name


@contextlib.contextmanager
def _tvm_errors(doing: str) -> Iterator[None]:
    """Turn an exception raised inside TVM into a GenccError carrying TVM's first meaningful line."""
    try:
        yield
    except GenccError:
        raise
    except Exception as e:  # TVM raises its own FFI error types, plus ValueError/TypeError from Python passes
        lines = [s.strip() for s in str(e).splitlines() if s.strip() and not s.startswith("Traceback")]
        raise GenccError(f"TVM failed {doing}: {type(e).__name__}: {lines[0] if lines else '(no message)'}") from None
