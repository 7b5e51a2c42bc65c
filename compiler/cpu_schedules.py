"""Fixed (untuned) CPU schedules for the llvm pipeline, as DLight rules, one per kind of fused kernel.

No TVM pipeline schedules CPU kernels, and unscheduled kernels run serial and mostly scalar. `RULES`
covers every kernel of our MLP and UNet steps:
  Contraction   matmul, einsum, conv (as an implicit GEMM) + elementwise epilogue: register-tiled, vectorised
  RowReduction  GroupNorm statistics, softmax: rows in parallel, reductions as per-lane partial sums
  Injective     elementwise and data movement (SiLU, residual adds, concat, split): parallel, vectorised
A kernel no rule matches stays unscheduled: slow but correct.
"""
from __future__ import annotations

import math
import re

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, try_inline_contiguous_spatial
from tvm.target.codegen import llvm_get_vector_width

MIN_PARALLEL_WORK = 1 << 16   # element operations: a few microseconds on one core


class Contraction(ScheduleRule):
    """One contraction out[rows, col] = sum_k a * b, plus an elementwise epilogue.

    A ROWS x COLS tile of accumulators stays in registers while the reduction loops run outside it: the
    tile's columns run along the "vector axis", the output axis that is the contiguous (last) axis of
    one operand and absent from the other (the output channels of a conv whose weights are laid out
    IHWO, the columns of a matmul), so each reduction step is COLS/16 vector loads of that operand,
    ROWS broadcasts of the other and ROWS * COLS/16 FMAs. Tiles run in parallel and the epilogue
    (bias, residual add) is applied as each tile is written. A matmul's rows are the dynamic batch,
    padded to whole tiles.
    """

    ACC = 256        # accumulator floats per tile: 16 AVX-512 registers
    COLS = 64        # at most; 4 x 64 beat 8 x 32 by 10-15% on the MLP's matmuls and 64-channel convs
    MAX_ROWS = 16    # more rows than registers would spill
    # Operands along the vector axis (conv weights, a matmul's B) bigger than this: column tiles outside
    # row tiles and the batch, so each row tile of every sample reuses a weight slice already in L2
    # instead of streaming all the weights from L3 again. A 256-channel 3x3 conv (2.4 MB of weights) at
    # batch 8: 1.7x as fast at 16x16, and the batch inside the slice another 1.36x at 32x32. Below it
    # (gencc's own networks, whose weights fit L2) the row-major order stays; either order sums each
    # output in the same order, so results are bit-identical.
    COL_OUTER_BYTES = 512 << 10

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not blocks or len(blocks) > 2 or (len(blocks) == 2 and not blocks[1].is_injective()):
            return None
        main, kind = blocks[0], blocks[0].dom_kind()
        block = sch.get(main.block_rv)
        outputs = {w.source.name for w in block.writes}
        operands = [r for r in block.reads if r.source.name not in outputs]
        if (not re.fullmatch("S+R+", kind) or len(operands) != 2
                or len(sch.get_loops(main.block_rv)) != len(kind)):
            return None   # not a two-operand contraction in normal form
        col = _vector_axis(block, operands, kind.find("R"), _lanes(target, block.writes[0].source.dtype))
        if col is None:
            return None
        try:
            self._tile(sch, main.block_rv, kind.find("R"), col, blocks[1].block_rv if len(blocks) == 2 else None)
        except s_tir.ScheduleError:
            return None   # the kernel stays unscheduled: slow but correct
        return sch

    def _tile(self, sch: s_tir.Schedule, block, n_spatial: int, col: int, epilogue) -> None:
        extents = [_static_extent(sch, loop) for loop in sch.get_loops(block)[:n_spatial]]
        n_cols = _largest_divisor(extents[col], self.COLS)
        rows, n_rows, padded = self._row_tiles(sch, block, extents, col, n_cols)
        loops = sch.get_loops(block)   # pad_einsum replaced them
        spatial, reduction = loops[:n_spatial], loops[n_spatial:]
        outer = [spatial[i] for i in range(n_spatial) if i != col and i not in rows]
        fused = sch.fuse(*[spatial[i] for i in rows]) if rows else sch.add_unit_loop(block)
        row_out, row_in = sch.split(fused, [None, n_rows])
        col_out, col_in = sch.split(spatial[col], [None, n_cols])
        big = self._col_outer(sch, extents[col], reduction)   # then the batch too runs inside a weight slice
        order = [col_out, *outer, row_out] if big else [*outer, row_out, col_out]
        sch.reorder(*order, *reduction, row_in, col_in)
        copy_back = sch.get_consumers(block) if padded else []
        acc = sch.cache_write(block, 0, "local")
        _put_axis_last(sch, block, col)
        sch.reverse_compute_at(acc, order[-1])
        for consumer in [*copy_back, *([epilogue] if epilogue is not None else [])]:
            sch.reverse_compute_inline(consumer)
        sch.vectorize(col_in)
        sch.unroll(row_in)
        sch.vectorize(sch.get_loops(acc)[-1])
        work = _static_product(extents + [_static_extent(sch, loop) for loop in reduction])
        _parallel(sch, sch.fuse(*order), work)
        sch.decompose_reduction(block, reduction[0])   # last: the primitives above need the whole reduction

    def _col_outer(self, sch: s_tir.Schedule, cols: int | None, reduction: list) -> bool:
        """Whether the operand read along the vector axis (cols x the reduction, float32) outgrows L2."""
        size = _static_product([cols] + [_static_extent(sch, loop) for loop in reduction])
        return size is not None and 4 * size > self.COL_OUTER_BYTES

    def _row_tiles(self, sch: s_tir.Schedule, block, extents: list, col: int, n_cols: int) -> tuple:
        """(the spatial axes to tile as rows, rows per tile, whether the rows were padded).

        Tiles must not need a predicate: one in the reduction loop kept the matmul's accumulators out
        of registers (its local buffer then spans the whole dynamic batch), at 40% of the speed.
        """
        want = min(self.MAX_ROWS, max(1, self.ACC // n_cols))
        rows = [i for i in range(len(extents)) if i != col]
        dynamic = [i for i in rows if extents[i] is None]
        # A conv tiles its H x W and leaves the batch outside, in the parallel loop: the rows fused into
        # a tile must be adjacent loops, so with the vector axis (channels) between them, the batch
        # stays out even when it is static (a tuned static-batch build).
        inner = [i for i in rows if (not dynamic or i > dynamic[-1]) and (i > col or all(r < col for r in rows))]
        n_rows = _largest_divisor(math.prod(extents[i] for i in inner), want)
        if not dynamic or n_rows >= min(4, want):
            return inner, n_rows, False
        if len(rows) == 1:
            # A matmul's only row is the dynamic batch: pad it to whole tiles. The padded input rows
            # read as zeros (inlined, no copy) and the padded output rows are never written back.
            sch.pad_einsum(block, [want if i == rows[0] else 1 for i in range(len(sch.get(block).iter_vars))])
            for producer in sch.get_producers(block):
                sch.compute_inline(producer)
            return rows, want, True
        return rows, want, False   # predicated: slow but correct


def _vector_axis(block: tirx.SBlock, operands: list, n_spatial: int, lanes: int) -> int | None:
    """The spatial iterator to vectorise: the last index of one operand that the other does not read.

    Falls back to the innermost spatial iterator (contiguous in the output) when no operand qualifies,
    as in attention's softmax(QK) @ V, which reduces along both operands' last axes.
    """
    iters = block.iter_vars[:n_spatial]
    for i, it in enumerate(iters):
        if not isinstance(it.dom.extent, (int, tirx.IntImm)) or int(it.dom.extent) % lanes:
            continue
        for a, b in (operands, operands[::-1]):
            if a.region[-1].min.same_as(it.var) and not any(
                    v.same_as(it.var) for r in b.region for v in tirx.analysis.undefined_vars(r.min)):
                return i
    last = iters[-1].dom.extent
    return n_spatial - 1 if isinstance(last, (int, tirx.IntImm)) else None


def _put_axis_last(sch: s_tir.Schedule, block, col: int) -> None:
    """Lay the accumulator out with the vector axis innermost, so a tile's columns are one register row."""
    write = sch.get(block).writes[0]
    var = sch.get(block).iter_vars[col].var
    dim = next((d for d, r in enumerate(write.region) if r.min.same_as(var)), None)
    if dim is None or dim == len(write.region) - 1:
        return
    order = [d for d in range(len(write.region)) if d != dim] + [dim]
    sch.transform_layout(block, ("write", 0), lambda *idx: [idx[d] for d in order])


class RowReduction(ScheduleRule):
    """Reductions along rows plus elementwise work on the same rows: GroupNorm statistics, softmax.

    Rows run in parallel and every block is computed inside its row, so the row stays in L1. A long
    reduction is split into one partial sum per vector lane (rfactor), so it runs as vector adds rather
    than a chain of dependent scalar adds; DLight's CPU Reduction rule, otherwise alike, keeps them
    scalar, and its GroupNorm kernels took 2 ms of the UNet step at batch 64.
    """

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = _inline_single_use(sch, normalize_prim_func(sch))
        if (not infos or len(infos) < 2 or not infos[-1].is_injective()
                or all(info.is_injective() for info in infos)):
            return None
        n_rows = min(len(k) - len(k.lstrip("S")) for k in (info.dom_kind() for info in infos))
        if n_rows == 0:
            return None
        lanes = _lanes(target, sch.get(infos[-1].block_rv).writes[0].source.dtype)
        work = _static_product([_static_extent(sch, loop) for info in infos for loop in sch.get_loops(info.block_rv)])
        try:
            partials = [None if info.is_injective() else self._vector_partials(sch, info.block_rv, lanes)
                        for info in infos[:-1]]
            row = sch.fuse(*sch.get_loops(infos[-1].block_rv)[:n_rows])
            _parallel(sch, row, work)
            if len(sch.get_loops(infos[-1].block_rv)) > 1:   # else its only loop is the row loop itself
                _vectorize_inner(sch, infos[-1].block_rv, lanes)
            for info, partial in reversed(list(zip(infos[:-1], partials, strict=True))):   # consumers first
                sch.compute_at(info.block_rv, row, preserve_unit_loops=True)
                if partial is not None:
                    sch.compute_at(partial, row)
                    *_, lane, step = sch.get_loops(partial)   # compute_at puts the lane axis first
                    sch.reorder(step, lane)
                    sch.vectorize(lane)
                elif info.is_injective():
                    _vectorize_inner(sch, info.block_rv, lanes)
        except (s_tir.ScheduleError, ValueError):   # ValueError: a loop the rule expected was folded away
            return None
        return sch

    @staticmethod
    def _vector_partials(sch: s_tir.Schedule, block, lanes: int):
        """rfactor a reduction over a static, vector-multiple inner axis into per-lane partial sums."""
        inner = sch.get_loops(block)[-1]
        extent = _static_extent(sch, inner)
        if extent is None or extent % lanes or extent <= lanes:
            return None
        _, lane = sch.split(inner, [None, lanes])
        return sch.rfactor(lane, factor_axis=len(sch.get(block).writes[0].region))


def _inline_single_use(sch: s_tir.Schedule, infos: list | None) -> list | None:
    """Inline each elementwise block that feeds one other block; the rest stay (and are computed once).

    Softmax's exp feeds both the sum and the normalisation: inlined, it would be evaluated twice.
    """
    if not infos:
        return infos
    kept = []
    for info in infos[:-1]:
        if info.is_injective() and len(sch.get_consumers(info.block_rv)) == 1:
            try:
                sch.compute_inline(info.block_rv)
                continue
            except s_tir.ScheduleError:
                pass
        kept.append(info)
    return kept + infos[-1:]


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Vectorise a block's innermost loop in whole vectors (a row of 256, 64 or 16 floats)."""
    inner = sch.get_loops(block)[-1]
    extent = _static_extent(sch, inner)
    if extent is None or extent < 2:
        return
    vec = _largest_divisor(extent, lanes)
    if vec > 1:
        sch.vectorize(sch.split(inner, [None, vec])[1] if vec < extent else inner)


class Injective(ScheduleRule):
    """Elementwise and data-movement kernels: vectorise the innermost static axes, the rest in parallel.

    Each block left after inlining (a split writes one per output) gets its own loop nest.
    """

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if target.kind.name != "llvm" or not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = try_inline_contiguous_spatial(sch, normalize_prim_func(sch))
        if not blocks or not all(b.is_injective() and sch.get_loops(b.block_rv) for b in blocks):
            return None
        for b in blocks:
            self._schedule(sch, b.block_rv, _lanes(target, sch.get(b.block_rv).writes[0].source.dtype))
        return sch

    @staticmethod
    def _schedule(sch: s_tir.Schedule, block, lanes: int) -> None:
        loops = sch.get_loops(block)
        work = _static_product([_static_extent(sch, loop) for loop in loops])
        # Fuse the innermost static loops until they hold whole vectors (an 8x8 image plane: 64 floats).
        inner, size = [], 1
        for loop in reversed(loops):
            extent = _static_extent(sch, loop)
            if extent is None or size % lanes == 0 and size >= lanes:
                break
            inner.insert(0, loop)
            size *= extent
        outer = loops[:len(loops) - len(inner)]
        vec = _largest_divisor(size, lanes) if inner else 1
        if vec > 1:
            rest, vec_loop = sch.split(sch.fuse(*inner), [None, vec])
            sch.vectorize(vec_loop)
            outer = [*outer, rest]
        if outer:
            _parallel(sch, sch.fuse(*outer), work)


def _parallel(sch: s_tir.Schedule, loop, work: int | None) -> None:
    """Run a loop in parallel unless the kernel's work is static and too small to pay for the launch.

    A parallel launch costs microseconds, and far more when the other core is busy: a kernel whose size
    does not grow with the batch (the time embedding's matmuls) runs serially. Work is a count of
    element operations (multiply-adds for a contraction); None means it grows with the dynamic batch.
    """
    if work is None or work >= MIN_PARALLEL_WORK:
        sch.parallel(loop)


def _static_product(extents: list) -> int | None:
    return None if None in extents else math.prod(extents)


def _lanes(target: tvm.target.Target, dtype: str) -> int:
    bits = llvm_get_vector_width(target)
    return max(1, (bits if bits > 0 else 128) // tvm.runtime.DataType(dtype).bits)


def _static_extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def _largest_divisor(n: int, cap: int) -> int:
    """The largest divisor of n not above cap: a tile that needs no predicate, so it vectorises."""
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


RULES = (Contraction(), RowReduction(), Injective())
