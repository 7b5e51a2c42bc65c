"""Winograd F(2x2, 3x3) for wide 3x3 convs on CPUs (compiler/winograd.py): the maths, then TVM vs ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gencc.compiler import winograd


def direct_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """3x3 conv, stride 1, pad 1, NCHW x OIHW, in float64."""
    n, _, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,kc->nkhw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out


def winograd_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The same conv the way the compiled kernels compute it: input transform, 16 GEMMs, output transform."""
    n, c, h, wd = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1))).transpose(0, 2, 3, 1)   # NHWC
    bb, aa = np.kron(winograd.B_T, winograd.B_T), np.kron(winograd.A_T, winograd.A_T)
    th, tw = h // 2, wd // 2
    windows = np.stack([xp[:, a:a + 2 * th:2, b:b + 2 * tw:2, :] for a in range(4) for b in range(4)])
    v = np.einsum("sq,qnijc->snijc", bb, windows).reshape(16, n, th * tw, c)
    m = v @ winograd.filter_transform(w).astype(np.float64)                     # (16, n, t, k)
    y = np.einsum("ps,sntk->pntk", aa, m).reshape(2, 2, n, th, tw, -1)
    return y.transpose(2, 5, 3, 0, 4, 1).reshape(n, -1, h, wd)


def test_winograd_maths_equals_the_direct_conv():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 6, 8)), rng.standard_normal((7, 5, 3, 3))
    np.testing.assert_allclose(winograd_conv(x, w), direct_conv(x, w), rtol=1e-5, atol=1e-5)


def conv_model(c: int, k: int, h: int, w: int) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", k, h, w])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight


def kernels(model: onnx.ModelProto) -> set[str]:
    """The PrimFunc names after the llvm kernel passes."""
    import tvm

    from gencc.compiler.build import import_onnx, llvm_kernel_passes, resolve_target

    target, _ = resolve_target("llvm", None)
    with target:
        mod = tvm.transform.Sequential(llvm_kernel_passes(target))(import_onnx(model, "llvm"))
    return {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.mark.parametrize("c,k,h,w,rewritten", [
    (128, 128, 8, 6, True),     # wide, even H and W: rewritten
    (64, 128, 8, 8, False),     # too narrow: the transforms would cost what the GEMM saves
    (128, 128, 7, 8, False),    # odd height: no whole 2x2 output tiles
])
def test_only_wide_even_convs_are_rewritten(c, k, h, w, rewritten):
    names = kernels(conv_model(c, k, h, w)[0])
    assert any("winograd" in n for n in names) == rewritten, sorted(names)


@pytest.mark.slow
def test_compiled_winograd_conv_matches_onnx_runtime(tmp_path):
    from gencc.compiler.build import build, run_parity

    model, _ = conv_model(128, 256, 8, 8)
    onnx.save(model, tmp_path / "conv.onnx")
    build(tmp_path / "conv.onnx", "llvm", None, tmp_path / "conv.so")
    rng = np.random.default_rng(2)
    err = run_parity(tmp_path / "conv.so", tmp_path / "conv.onnx",
                     lambda b: {"x": rng.standard_normal((b, 128, 8, 8)).astype(np.float32)}, batches=(1, 3))
    assert err < 2e-5   # F(2x2, 3x3) rounds like the direct sum; the gate's own bound is 1e-4
