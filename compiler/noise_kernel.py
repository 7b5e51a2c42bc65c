"""The per-sample noise of runtime/noise.py as a compiled TVM kernel, so a CPU artifact draws its own noise.

At batch 1024 the numpy generator cost ~150 us a step for 2048 normals, as much as a sixth of the MLP
step; this kernel makes the same numbers, bit for bit, in ~20 us on two cores, written straight into
the buffers the step reads. It implements the contract `NOISE_CONTRACT` exactly as runtime/noise.py:
Philox4x32-10 on the counter (block j, stream, index lo, index hi) with key (seed lo, seed hi), then
Box-Muller in float64 on (x0, x1) and (x2, x3), rounded to float32.

    normals(key u32[2], streams u32[S], index u32[B, 2], out f32[L], n, s_stride, b_stride)
        out[s * s_stride + b * b_stride + e] = element e < n of sample index[b]'s row for streams[s]

The two strides let one kernel write step-major blocks (one padded row per step) and the chain's
batch-first (B, L, n) blocks. The kernel checks that every write lands inside `out`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from gencc.runtime.artifact import NOISE_CONTRACT
from gencc.runtime.device_noise import index_words, key_words
from gencc.runtime.errors import GenccError

_M0, _M1 = 0xD2511F53, 0xCD9E8D57   # Philox round multipliers, as in runtime/noise.py
_W0, _W1 = 0x9E3779B9, 0xBB67AE85   # Weyl key increments
_MASK = "T.uint64(4294967295)"


def _philox_box_muller() -> list[str]:
    """The loop body for one Philox block j of one (stream s, sample b) row, one binding per line.

    The ten rounds are unrolled here rather than left to a TIR loop: each value is bound once
    (`T.Bind`), so it stays a register. A plain `x = ...` in TVMScript is a mutable local buffer,
    and inside a parallel loop TVM allocates those from its workspace on every iteration (8x slower).
    """
    body = ["c0_0 = T.Cast('uint64', j)", "c1_0 = T.Cast('uint64', streams[s])",
            "c2_0 = T.Cast('uint64', index[b, 0])", "c3_0 = T.Cast('uint64', index[b, 1])",
            "k0_0 = T.Cast('uint64', key[0])", "k1_0 = T.Cast('uint64', key[1])"]
    for r in range(10):
        if r:
            body += [f"k0_{r} = (k0_{r - 1} + T.uint64({_W0})) & {_MASK}",
                     f"k1_{r} = (k1_{r - 1} + T.uint64({_W1})) & {_MASK}"]
        # A 32x32-bit product fits in uint64, so mulhilo is a multiply, a shift and a mask.
        body += [f"p0_{r} = T.uint64({_M0}) * c0_{r}", f"p1_{r} = T.uint64({_M1}) * c2_{r}",
                 f"c0_{r + 1} = (p1_{r} >> T.uint64(32)) ^ c1_{r} ^ k0_{r}", f"c1_{r + 1} = p1_{r} & {_MASK}",
                 f"c2_{r + 1} = (p0_{r} >> T.uint64(32)) ^ c3_{r} ^ k1_{r}", f"c3_{r + 1} = p0_{r} & {_MASK}"]
    # (x + 0.5) / 2^32 lies strictly inside (0, 1), so log never sees 0.
    body += [f"u{i} = (T.Cast('float64', c{i}_10) + T.float64(0.5)) * T.float64({2.0 ** -32!r})" for i in range(4)]
    body += ["r0 = T.sqrt(T.float64(-2.0) * T.log(u0))", "r1 = T.sqrt(T.float64(-2.0) * T.log(u2))",
             f"t0 = T.float64({2.0 * math.pi!r}) * u1", f"t1 = T.float64({2.0 * math.pi!r}) * u3",
             "base = s * s_stride + b * b_stride + j * T.int64(4)"]
    body = [re.sub(r"^(\w+) = (.*)$", r"\1 = T.Bind(\2)", line) for line in body]
    for q, value in enumerate(["r0 * T.cos(t0)", "r0 * T.sin(t0)", "r1 * T.cos(t1)", "r1 * T.sin(t1)"]):
        body += [f"if j * T.int64(4) + T.int64({q}) < n:",
                 f"    out[base + T.int64({q})] = T.Cast('float32', {value})"]
    return body


def tir_source() -> str:
    body = "\n".join(" " * 12 + line for line in _philox_box_muller())
    return f'''
@T.prim_func
def normals(key: T.Buffer((2,), "uint32"), streams_h: T.handle, index_h: T.handle, out_h: T.handle,
            n: T.int64, s_stride: T.int64, b_stride: T.int64):
    T.func_attr({{"global_symbol": "normals", "tirx.noalias": True}})
    S = T.int64()
    B = T.int64()
    L = T.int64()
    streams = T.match_buffer(streams_h, (S,), "uint32")
    index = T.match_buffer(index_h, (B, 2), "uint32")
    out = T.match_buffer(out_h, (L,), "float32")
    assert n > T.int64(0) and s_stride >= T.int64(0) and b_stride >= T.int64(0), "normals: bad n or strides"
    assert (S - T.int64(1)) * s_stride + (B - T.int64(1)) * b_stride + n <= L, "normals: out is too small"
    for sb in T.parallel(S * B):
        s = T.Bind(sb // B)
        b = T.Bind(sb % B)
        for j in range((n + T.int64(3)) // T.int64(4)):
{body}
'''


def build_noise(out_so: str | Path, target) -> None:
    """Compile the kernel for an llvm `target` (a tvm.target.Target) into the shared library out_so."""
    import tvm
    import tvm.script
    from tvm.script import tirx as T

    from gencc.runtime.atomic import atomic_path

    func = tvm.script.from_source(tir_source(), extra_vars={"T": T})
    ex = tvm.compile(tvm.IRModule({"normals": func}), target=target)
    with atomic_path(Path(out_so)) as tmp:
        ex.export_library(str(tmp))
        tmp.chmod(0o755)


# The parity gate's cases: ragged rows (n not a multiple of 4), 64-bit seeds and sample indices, and
# streams that are not consecutive, as the predictor-corrector sampler draws them.
_CASES = ((2, 0, np.arange(5), [1, 2, 3]), (7, 2**40 + 3, np.array([0, 2**33 + 5, 17]), [0, 9, 4]),
          (784, 123456789, np.arange(3) + 2**32 - 2, [5]))


def check_noise(so: str | Path, device=None) -> int:
    """Run the compiled kernel against runtime/noise.py; returns the number of values compared.

    Raises GenccError on any difference: the noise is part of what makes samples reproducible across
    backends, so the kernel must give the numpy reference's float32 values exactly.
    """
    import tvm

    from gencc.runtime.noise import SampleNoise

    fn = tvm.runtime.load_module(str(so))["normals"]
    dev = device or tvm.cpu(0)
    compared = 0
    for n, seed, idx, streams in _CASES:
        noise = SampleNoise(seed, idx, (n,))
        want = np.stack([noise.step(k - 1) if k else noise.prior() for k in streams])   # (S, B, n)
        out = tvm.runtime.tensor(np.full(want.size, np.nan, np.float32), device=dev)
        fn(tvm.runtime.tensor(key_words(seed), device=dev),
           tvm.runtime.tensor(np.array(streams, np.uint32), device=dev),
           tvm.runtime.tensor(index_words(noise.indices), device=dev), out, n, len(idx) * n, n)
        got = out.numpy().reshape(want.shape)
        if not np.array_equal(got, want):
            bad = int((got != want).sum())
            raise GenccError(f"the compiled noise kernel differs from runtime/noise.py in {bad} of {want.size} "
                             f"values (n={n}, seed={seed}); contract {NOISE_CONTRACT}")
        compared += want.size
    return compared

