"""Winograd F(2x2, 3x3) for the wide 3x3 convolutions of large CPU networks (Lavin & Gray, CVPR 2016).

A stride-1, pad-1 3x3 conv over C -> K channels is 9 C K multiply-adds per output pixel. Winograd's
minimal filtering computes each 2x2 output tile from a 4x4 input tile with 16 C K: 2.25x fewer. The
work becomes three kernels around two transposes (the transforms vectorise over channels, innermost in NHWC):
  input transform   V[s, n, t, c] = (B^T d B)[s] for tile t's 4x4 window d        (4 terms, +-1)
  batched GEMM      M[s] = V[s] @ U[s]   for the 16 window positions s, U = G w G^T folded at build time
  output transform  y[n, h, w, k] = (A^T M A)[h % 2, w % 2] of tile (h // 2, w // 2)  (9 terms, +-1)
F(2x2, 3x3)'s transforms hold only 0, +-1 and +-1/2, so it rounds like the direct sum (the compiled DDPM
CIFAR-10 UNet matches ONNX Runtime to 2.3e-6). F(4x4, 3x3) would save 4x, but its 5s, 8s and 1/24s cost
digits: the same UNet missed the parity gate by 0.14. The GEMM, over C x K slices that stay in cache, also
runs faster per multiply-add than the direct conv's implicit GEMM, which streams 9 C K weights from L2
for every tile. A 256-channel 16x16 conv at batch 8 on one thread: 16.8 ms direct, 7.1 ms Winograd
(4.9 of them the GEMM), 10.4 ms torch (oneDNN); docs/BENCHMARKS.md has the whole network.

Only wide convs are rewritten (C and K >= MIN_CHANNELS); below that the transforms, memory-bound, cost
what the GEMM saves. One conv, both widths C, 2 cores, direct -> Winograd: C=32 8x8 batch 64 0.67x (slower),
C=64 8x8 batch 64 1.15x, C=128 8x8 batch 64 1.37x, C=128 32x32 batch 8 0.98x, C=256 16x16 batch 8 2.4x (one thread).
gencc's own diffusion UNets (32..64 wide) keep their direct convs, bit for bit; its 256-wide GAN generators'
sub-pixel convs run Winograd (default digits generator at batch 64: 18.5 -> 7.2 ms).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax import Call, Expr, PyExprMutator, expr_functor

MIN_CHANNELS = 128
# The transforms stay kernels of their own (op_pattern 8, opaque): fused with the transposes around them,
# each of the 16 terms re-read the NCHW tensor with a bounds check, at half the speed of all three kernels.
_OPAQUE = {"op_pattern": 8}

# F(2x2, 3x3): y = A^T [(G g G^T) * (B^T d B)] A, for a 4x4 input tile d and a 3x3 filter g.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
TILE, WINDOW = A_T.shape   # 2x2 outputs from a 4x4 window


def filter_transform(w: np.ndarray) -> np.ndarray:
    """OIHW 3x3 weights (K, C, 3, 3) -> U (16, 1, C, K), the GEMM's right operand for each tile position."""
    u = np.einsum("xi,kcij,yj->xyck", G, w.astype(np.float64), G)
    return u.reshape(WINDOW * WINDOW, 1, w.shape[1], w.shape[0]).astype(np.float32)


def eligible(call: Call) -> bool:
    """A float32 NCHW 3x3 conv, stride 1, pad 1, no dilation or groups, constant weights, both widths
    at least MIN_CHANNELS and an even static height and width (whole 2x2 output tiles)."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
        return False
    a, (x, w) = call.attrs, call.args
    if (list(a.strides) != [1, 1] or list(a.padding) != [1, 1, 1, 1] or list(a.dilation) != [1, 1]
            or int(a.groups) != 1 or a.data_layout != "NCHW" or a.kernel_layout != "OIHW"
            or a.out_layout != "NCHW" or not isinstance(w, tvm.ir.expr.Constant)):
        return False
    if w.value.dtype != "float32" or tuple(w.value.shape[2:]) != (3, 3):
        return False
    ty = x.ty
    if not isinstance(ty, relax.TensorType) or ty.dtype != "float32" or not isinstance(ty.shape, relax.ShapeExpr):
        return False
    h, wd = ty.shape.values[2], ty.shape.values[3]
    static = all(isinstance(v, (int, tirx.IntImm)) for v in (h, wd))
    k, c = w.value.shape[:2]
    return static and int(h) % TILE == 0 and int(wd) % TILE == 0 and min(k, c) >= MIN_CHANNELS


def _sparse_rows(m: np.ndarray) -> list[list[tuple[int, float]]]:
    """Each row of a transform matrix as its (column, coefficient) pairs, zeros left out."""
    rows = [[(int(j), float(v)) for j, v in enumerate(row) if v] for row in m]
    assert len({len(r) for r in rows}) == 1, "each row of F(2x2, 3x3)'s B^T, and of its A^T, has as many terms"
    return rows


def _pick(r, values: list):
    """values[r] for a loop variable r: a chain of selects that folds away outside the vector loop."""
    out = values[-1]
    for i in range(len(values) - 2, -1, -1):
        out = tirx.Select(r == i, values[i], out)
    return out


def _term(rows, r, e: int) -> tuple:
    """(column, coefficient) of row r's e-th nonzero."""
    return (_pick(r, [row[e][0] for row in rows]),
            _pick(r, [tirx.const(row[e][1], "float32") for row in rows]))


def _input_transform(xp: te.Tensor, width: int) -> te.Tensor:
    """V[s, n, t, c] = (B^T d B)[s // 4, s % 4] from the padded NHWC input, for output tile t = i * (W/2) + j.

    Each row of B^T has two nonzeros (+-1), so each value is 4 terms, not 16."""
    n, _, _, c = xp.shape
    tiles_w, rows = width // TILE, _sparse_rows(B_T)

    def value(s, b, t, ch):
        i, j, x, y = t // tiles_w, t % tiles_w, s // WINDOW, s % WINDOW
        terms = []
        for e in range(len(rows[0])):
            (a, ca) = _term(rows, x, e)
            for f in range(len(rows[0])):
                (bcol, cb) = _term(rows, y, f)
                terms.append(ca * cb * xp[b, i * TILE + a, j * TILE + bcol, ch])
        return sum(terms)
    tiles = (xp.shape[1] - WINDOW + TILE) // TILE * tiles_w
    return te.compute((WINDOW * WINDOW, n, tiles, c), value, name="winograd_input")


def _output_transform(m: te.Tensor, height: int, width: int) -> te.Tensor:
    """y[n, h, w, k] (NHWC) = (A^T M A)[h % 2, w % 2] of tile (h // 2, w // 2); A^T's rows have 3 nonzeros."""
    _, n, _, k = m.shape
    tiles_w, rows = width // TILE, _sparse_rows(A_T)

    def value(b, h, w, ch):
        t = (h // TILE) * tiles_w + w // TILE
        terms = []
        for e in range(len(rows[0])):
            (x, ca) = _term(rows, h % TILE, e)
            for f in range(len(rows[0])):
                (y, cb) = _term(rows, w % TILE, f)
                terms.append(ca * cb * m[x * WINDOW + y, b, t, ch])
        return sum(terms)
    return te.compute((n, height, width, k), value, name="winograd_output")


@expr_functor.mutator
class _Rewriter(PyExprMutator):
    def visit_call_(self, call: Call) -> Expr:
        call = super().visit_call_(call)
        if not eligible(call):
            return call
        x, w = call.args
        height, width = (int(v) for v in x.ty.shape.values[2:])
        u = relax.const(filter_transform(w.value.numpy()))
        emit = self.builder_.emit
        pad = [0, 0, 1, WINDOW - TILE - 1, 1, WINDOW - TILE - 1, 0, 0]   # the last tile's window ends at H + 1
        xp = emit(relax.op.nn.pad(emit(relax.op.permute_dims(x, [0, 2, 3, 1])), pad))
        v = emit(self.builder_.call_te(_input_transform, xp, width, primfunc_name_hint="winograd_input",
                                       primfunc_attrs=_OPAQUE))
        m = emit(relax.op.matmul(v, u))
        y = emit(self.builder_.call_te(_output_transform, m, height, width,
                                       primfunc_name_hint="winograd_output", primfunc_attrs=_OPAQUE))
        return relax.op.permute_dims(y, [0, 3, 1, 2])


@tvm.transform.module_pass(opt_level=0, name="Winograd3x3")
class Winograd3x3:
    """Rewrite every eligible conv2d (see `eligible`) of every Relax function as Winograd F(2x2, 3x3)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()
