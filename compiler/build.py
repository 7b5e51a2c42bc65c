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
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import tvm
from onnx import helper, numpy_helper
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_stages
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline_contiguous_spatial

from gencc.runtime.atomic import atomic_path
from gencc.runtime.errors import GenccError

TARGETS = ("llvm", "cpu", "cuda")          # "cpu" is an alias of "llvm": the host CPU
DEFAULT_CUDA_ARCH = "sm_90"                # Hopper (H100/H200); pass arch="sm_80" for A100, "sm_89" for L4/4090
CUDA_ARCH = re.compile(r"sm_\d{2,3}[a-z]?")
ATOL = 1e-4
PIPELINES = {   # recorded in each build's description
    "llvm": "sigmoid rewrite, FastMathTransform, CPU default passes + gencc contraction schedule (untuned)",
    "cuda": "zero pipeline, DLight GPU schedules (Matmul, GEMV, Reduction, GeneralReduction, Fallback)",
}

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


def build(onnx_path: str | Path, target: str, arch: str | None, out_so: str | Path) -> dict:
    """Compile one ONNX function into out_so (written atomically); returns a description with timings."""
    onnx_path, out_so = Path(onnx_path), Path(out_so)
    tvm_target, desc = resolve_target(target, arch)
    model = _load_onnx(onnx_path)
    if not out_so.parent.is_dir():
        raise GenccError(f"cannot write {str(out_so)!r}: its directory does not exist")
    start = time.perf_counter()
    with _tvm_errors(f"importing {onnx_path.name} into TVM"):
        mod = _import(model, desc["kind"])
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


def _import(model: onnx.ModelProto, kind: str) -> tvm.IRModule:
    if kind == "llvm":
        model = rewrite_sigmoid(model)
    # Weights become constants, so FoldConstant pre-transposes them once at build time.
    return from_onnx(model, keep_params_in_input=False)


def _compile_llvm(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    # relax.get_default_pipeline(llvm) with one stage added after fusion: no pipeline schedules CPU
    # kernels (tvm.compile's own "default" does not even fuse or fold constants), and unscheduled
    # matmuls ran the batch-1024 MLP step 35x slower than with _CPUContraction. The stages come from
    # the backend module: relax.pipeline.dataflow_lower_passes(llvm) is broken in TVM 0.27.
    mod = relax.transform.FastMathTransform()(mod)
    passes = (cpu_stages.library_dispatch_passes(target) + cpu_stages.legalize_passes(target)
              + [dl.ApplyDefaultSchedule(_CPUContraction())]
              + cpu_stages.dataflow_lower_passes(target) + cpu_stages.finalize_passes(target))
    with target:
        mod = tvm.transform.Sequential(passes)(mod)
    return tvm.compile(mod, target=target, relax_pipeline=None)


def _compile_cuda(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.runtime.Executable:
    # get_default_pipeline(cuda) fails on dynamic-batch models ("The function body is expected to be
    # the root block"), and unscheduled kernels fail with "Did you forget to bind?": legalise and fuse
    # with the zero pipeline, then give every kernel a DLight GPU schedule.
    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                      dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)
    return tvm.compile(mod, target=target)


class _CPUContraction(ScheduleRule):
    """A fixed CPU schedule for one contraction (matmul, einsum, conv) plus an elementwise epilogue.

    out[rows, j] = sum_k a * b: a ROWS x COLS tile of accumulators stays in registers while the
    reduction loops run outside it, the tile's columns (the innermost output axis) are vectorised,
    tiles run in parallel, and the epilogue (bias, activation) is applied as each tile is written.
    The rows may include the dynamic batch: the last row tile is predicated.
    """

    ROWS, COLS = 4, 64   # 16 AVX-512 registers of accumulators; 4 x 32 and 8 x 32 were 5-25% slower here

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not blocks or len(blocks) > 2 or (len(blocks) == 2 and not blocks[1].is_injective()):
            return None
        main, kind = blocks[0], blocks[0].dom_kind()
        n_spatial = kind.find("R")
        block = sch.get(main.block_rv)
        operands = {r.source.name for r in block.reads} - {w.source.name for w in block.writes}
        if (not re.fullmatch("S+R+", kind) or len(operands) != 2 or len(sch.get_loops(main.block_rv)) != len(kind)
                or not isinstance(n_cols := main.dom()[n_spatial - 1], (int, tirx.IntImm))):
            return None   # not a two-operand contraction with a static innermost output axis
        try:
            self._tile(sch, main.block_rv, n_spatial, int(n_cols), blocks[1].block_rv if len(blocks) == 2 else None)
        except s_tir.ScheduleError:
            return None   # the kernel stays unscheduled: slow but correct
        return sch

    def _tile(self, sch: s_tir.Schedule, block, n_spatial: int, n_cols: int, epilogue) -> None:
        loops = sch.get_loops(block)
        *rows, cols = loops[:n_spatial]
        reduction = loops[n_spatial:]
        rows = sch.fuse(*rows) if rows else sch.add_unit_loop(block)
        row_out, row_in = sch.split(rows, [None, self.ROWS])
        col_out, col_in = sch.split(cols, [None, _largest_divisor(n_cols, self.COLS)])
        sch.reorder(row_out, col_out, *reduction, row_in, col_in)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, col_out)
        if epilogue is not None:
            sch.reverse_compute_inline(epilogue)
        sch.vectorize(col_in)
        sch.unroll(row_in)
        sch.vectorize(sch.get_loops(acc)[-1])
        sch.parallel(sch.fuse(row_out, col_out))
        sch.decompose_reduction(block, reduction[0])   # last: the primitives above need the whole reduction


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of n not above cap: a column tile that needs no predicate, so it vectorises."""
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def run_parity(so_path: str | Path, onnx_path: str | Path, make_inputs: MakeInputs,
               batches: tuple[int, ...] = (1, 5), atol: float = ATOL) -> float:
    """Max abs difference between a CPU library and ONNX Runtime on make_inputs(b) for each batch b."""
    import onnxruntime as ort
    from tvm.runtime.vm import VirtualMachine

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with _tvm_errors(f"loading {Path(so_path).name}"):
        main = VirtualMachine(tvm.runtime.load_module(str(so_path)), tvm.cpu())["main"]
    err = 0.0
    for batch in batches:
        feeds = make_inputs(batch)
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i.name])) for i in session.get_inputs()]
        with _tvm_errors(f"running {Path(so_path).name} at batch {batch}"):
            got = _outputs(main(*args))
        for g, want in zip(got, session.run(None, feeds), strict=True):
            err = max(err, float(np.abs(g - want).max()))
    if not err <= atol:   # also catches NaN
        raise GenccError(f"TVM library {str(so_path)!r} differs from ONNX Runtime by {err:.3g} > {atol:g}")
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
