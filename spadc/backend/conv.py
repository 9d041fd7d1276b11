"""LLVM for convolution and max pooling over one sample (spadc/ir/conv.py has their records and
NumPy references).

A one-dimensional op is emitted as a two-dimensional one of height 1. The convolutions are direct:
per output row and input channel, each kernel row that lands inside the input adds, for each kernel
column, a scaled run of the input row to the output row (`conv`), of the output's adjoint to the
input's (`conv_input_grad`), or accumulates a dot product of the two (`conv_weight_grad`). A kernel
column's run of valid outputs is known when the code is emitted, so padding costs no test in the
inner loops, which are unit-stride in the output (vectorisable) when the stride is 1.

Invariants: no load or store outside an operand or the result (rows are tested, columns clipped
when emitted); each result is zeroed, then accumulated, and never shares storage with an operand;
a pool's window search keeps the first maximal entry (a NaN counts as maximal), as
`spadc.ir.conv.pool_choices` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ..ir.conv import Window, conv_window, pool_window
from . import gemm

I1, I64 = ir.IntType(1), ir.IntType(64)
ROWS = 4  # output channels per register tile (by COLUMN_VECTORS vectors of output columns)
COLUMN_VECTORS = 2


@dataclass(frozen=True)
class Plane:
    """An op's geometry lifted to two spatial axes: input (H, W), output (OH, OW), its window."""
    input: tuple[int, int]
    output: tuple[int, int]
    window: Window

    @classmethod
    def of(cls, window: Window, spatial, out_spatial) -> "Plane":
        lift = (lambda t, one: (one,) * (2 - len(t)) + tuple(t))
        return cls(lift(spatial, 1), lift(out_spatial, 1),
                   Window(lift(window.kernel, 1), lift(window.stride, 1), lift(window.padding, 0), lift(window.dilation, 1)))

    def input_row(self, e, oh, kh):
        """The input row that output row `oh` meets at kernel row `kh` (maybe outside the input)."""
        w, b = self.window, e.b
        return b.add(b.mul(oh, I64(w.stride[0])), b.sub(b.mul(kh, I64(w.dilation[0])), I64(w.padding[0])))

    def inside(self, e, index, axis: int):
        return e.b.icmp_unsigned("<", index, I64(self.input[axis]))

    def columns(self, kw: int) -> tuple[int, int, int]:
        """For kernel column `kw`: the outputs [lo, hi) whose input column is inside, and the shift
        (input column = output column * stride + shift)."""
        w = self.window
        lo, hi = w.valid_outputs(1, kw, self.input[1], self.output[1])
        return lo, hi, kw * w.dilation[1] - w.padding[1]


def _conv_plane(op, x_shape, kernel) -> Plane:
    window = conv_window(op.attrs, kernel)
    return Plane.of(window, x_shape[1:], window.out_shape(x_shape[1:]))


def _each_tap(e, op, plane: Plane, c_out: int, per_group_in: int):
    """For each output channel co, output row oh, input channel ci of co's group and kernel row kh
    inside the input: yields (co, oh, ci, its index within the group, kh, input row)."""
    b = e.b
    per_group_out = c_out // op.attrs["groups"]
    with e.loop(c_out, "co") as co:
        first_in = b.mul(b.udiv(co, I64(per_group_out)), I64(per_group_in))
        with e.loop(plane.output[0], "oh") as oh:
            with e.loop(per_group_in, "cg") as cg:
                ci = b.add(first_in, cg)
                with e.loop(plane.window.kernel[0], "kh") as kh:
                    ih = plane.input_row(e, oh, kh)
                    with b.if_then(plane.inside(e, ih, 0)):
                        yield co, oh, ci, cg, kh, ih


def _at(e, indices, shape):
    """The row-major offset of a multi-index (LLVM values or ints) in a tensor of `shape`."""
    b, offset = e.b, I64(0)
    for index, size in zip(indices, shape):
        offset = b.add(b.mul(offset, I64(size)), index if isinstance(index, ir.Value) else I64(index))
    return offset


# ---- register tiles (unit stride along the columns) -----------------------------------------------

def scratch_bytes(op, float_bytes: int) -> int:
    """Workspace the op needs while it runs: the padded copy of the operand its tiles read."""
    padded = _padded_source(op)
    return 0 if padded is None else padded[0] * padded[1] * padded[2] * float_bytes


def _padded_source(op):
    """(channels, rows, columns) of the zero-padded copy that a tiled convolution reads (x, or the
    output's adjoint for `conv_input_grad`), or None: no copy (x without padding), or no tiles (a column
    stride above 1, or another op)."""
    if op.kind not in ("conv", "conv_input_grad", "conv_weight_grad") or op.attrs["stride"][-1] != 1:
        return None
    x_shape = op.result.type.shape if op.kind == "conv_input_grad" else op.args[0].type.shape
    w_shape = op.result.type.shape if op.kind == "conv_weight_grad" else op.args[1].type.shape
    plane = _conv_plane(op, x_shape, w_shape[2:])
    (H, W), (OH, OW), (ph, pw) = plane.input, plane.output, plane.window.padding
    if op.kind != "conv_input_grad":
        return None if ph == pw == 0 else (op.args[0].type.shape[0], H + 2 * ph, W + 2 * pw)
    left, right = _grad_columns(plane)
    return (op.args[0].type.shape[0], OH, left + OW + right)


def _grad_columns(plane: Plane) -> tuple[int, int]:
    """Zero columns before and after the output's adjoint so that input column iw reads its column
    iw + pw - kw * dw (+ the ones before) for every kernel column kw."""
    (W, OW), pw, dw, KW = (plane.input[1], plane.output[1]), plane.window.padding[1], plane.window.dilation[1], plane.window.kernel[1]
    return max(0, (KW - 1) * dw - pw), max(0, W - 1 + pw - (OW - 1))


def _copy_padded(e, op, source, plane_of_source: tuple[int, int], top: int, left: int):
    """The op's scratch as a zeroed [C, rows, columns] tensor with `source` ([C, *plane_of_source])
    copied in from row `top`, column `left`: its pointer."""
    b = e.b
    pointer = b.bitcast(e.scratch(op), e.float.as_pointer())
    channels, rows, columns = _padded_source(op)
    height, width = plane_of_source
    with e.loop(channels * rows * columns, "zero") as j:
        b.store(ir.Constant(e.float, 0.0), b.gep(pointer, [j], inbounds=True))
    with e.loop(channels * height, "row") as row:
        c, y = b.udiv(row, I64(height)), b.urem(row, I64(height))
        target = b.add(b.mul(b.add(b.mul(c, I64(rows)), b.add(y, I64(top))), I64(columns)), I64(left))
        with e.loop(width, "column") as x:
            b.store(e.load(source, b.add(b.mul(row, I64(width)), x)), b.gep(pointer, [b.add(target, x)], inbounds=True))
    return pointer


def _tiled_correlation(e, out, source, source_shape, weights, rows_per_group: int, channels_per_group: int,
                       kernel: tuple[int, int], source_row, column_offset, weight_at):
    """out[r, y, x] = sum over c of r's group, kh, kw (in that order) of
    weights[weight_at(r, group, c, kh, kw)] * source[group * channels_per_group + c, row, x + column_offset(kw)]
    where (row, contributes) = source_row(y, kh) (a row that does not contribute adds nothing). Register
    tiles of ROWS rows by COLUMN_VECTORS vectors of columns; tiles at the ends overlap their neighbours
    (each entry is written, and summed in the same order whatever its tile)."""
    b = e.b
    rows, width = out.type.shape[0], out.type.shape[-1]
    height = out.type.shape[1] if out.type.rank == 3 else 1
    _, source_rows, source_columns = source_shape
    KH, KW = kernel
    vector = gemm.width(e) if width >= gemm.width(e) else 1
    lanes = gemm.Lanes(e, vector)
    vectors = min(COLUMN_VECTORS, width // vector)
    tile_rows = min(ROWS, rows_per_group)
    accumulators = [[e.alloca(lanes.type, name=f"acc{i}.{j}") for j in range(vectors)] for i in range(tile_rows)]
    out_pointer = e.pointer(out)

    def tile(group, r0, y, x0):
        for accumulator in (a for row in accumulators for a in row):
            b.store(lanes.zero(), accumulator)
        with e.loop(channels_per_group, "c") as c:
            channel = b.add(b.mul(group, I64(channels_per_group)), c)
            with e.loop(KH, "kh") as kh:
                source_y, contributes = source_row(y, kh)
                with b.if_then(contributes):
                    line = b.add(b.mul(b.add(b.mul(channel, I64(source_rows)), source_y), I64(source_columns)), x0)
                    for kw in range(KW):
                        start = b.add(line, I64(column_offset(kw)))
                        xs = [lanes.load(source, b.add(start, I64(j * vector))) for j in range(vectors)]
                        for i in range(tile_rows):
                            weight = lanes.splat(e.load(weights, weight_at(b.add(r0, I64(i)), group, c, kh, kw)))
                            for j in range(vectors):
                                b.store(gemm.fused(e, b.load(accumulators[i][j]), weight, xs[j]), accumulators[i][j])
        for i in range(tile_rows):
            base = b.add(b.mul(b.add(b.mul(b.add(r0, I64(i)), I64(height)), y), I64(width)), x0)
            for j in range(vectors):
                lanes.store(b.load(accumulators[i][j]), out_pointer, b.add(base, I64(j * vector)))

    with e.loop(rows // rows_per_group, "group") as group:
        def over_rows(row_indices):
            r0 = b.add(b.mul(group, I64(rows_per_group)), row_indices[0])
            with e.loop(height, "y") as y:
                gemm.covering(e, width, vector * vectors, lambda columns: tile(group, r0, y, columns[0]))
        gemm.covering(e, rows_per_group, tile_rows, over_rows)


def _fast_conv(e, op) -> bool:
    """`conv` by register tiles, when its column stride is 1 (else False: nothing emitted)."""
    x, w = op.args
    if op.attrs["stride"][-1] != 1:
        return False
    plane = _conv_plane(op, x.type.shape, w.type.shape[2:])
    (H, W), (KH, KW) = plane.input, plane.window.kernel
    (sh, dh), (ph, pw), dw = (plane.window.stride[0], plane.window.dilation[0]), plane.window.padding, plane.window.dilation[1]
    c_out, per_group_in = w.type.shape[0], w.type.shape[1]
    b = e.b
    if _padded_source(op) is None:
        source, shape = e.pointer(x), (x.type.shape[0], H, W)
    else:
        source, shape = _copy_padded(e, op, x, (H, W), ph, pw), _padded_source(op)

    def weight_at(r, group, c, kh, kw):  # w[r, c, kh, kw]
        return b.add(b.mul(b.add(b.mul(b.add(b.mul(r, I64(per_group_in)), c), I64(KH)), kh), I64(KW)), I64(kw))
    _tiled_correlation(e, op.result, source, shape, w, c_out // op.attrs["groups"], per_group_in, (KH, KW),
                       lambda y, kh: (b.add(b.mul(y, I64(sh)), b.mul(kh, I64(dh))), I1(1)), lambda kw: kw * dw, weight_at)
    return True


def _fast_input_grad(e, op) -> bool:
    """`conv_input_grad` by register tiles over the input's entries, when the column stride is 1."""
    g, w = op.args
    if op.attrs["stride"][-1] != 1:
        return False
    plane = _conv_plane(op, op.result.type.shape, w.type.shape[2:])
    (OH, OW), (KH, KW) = plane.output, plane.window.kernel
    sh, dh, ph = plane.window.stride[0], plane.window.dilation[0], plane.window.padding[0]
    pw, dw = plane.window.padding[1], plane.window.dilation[1]
    c_out, per_group_in = w.type.shape[0], w.type.shape[1]
    per_group_out = c_out // op.attrs["groups"]
    left, _ = _grad_columns(plane)
    b = e.b
    source = _copy_padded(e, op, g, (OH, OW), 0, left)

    def source_row(y, kh):  # the output row (ih + ph - kh * dh) / sh, when whole and inside
        shifted = b.sub(b.add(y, I64(ph)), b.mul(kh, I64(dh)))
        oh = b.sdiv(shifted, I64(sh))
        inside = b.and_(b.icmp_signed("==", b.mul(oh, I64(sh)), shifted),
                        b.and_(b.icmp_signed(">=", shifted, I64(0)), b.icmp_signed("<", oh, I64(OH))))
        return oh, inside

    def weight_at(r, group, c, kh, kw):  # w[group * per_group_out + c, r - group * per_group_in, kh, kw]
        co, ci = b.add(b.mul(group, I64(per_group_out)), c), b.sub(r, b.mul(group, I64(per_group_in)))
        return b.add(b.mul(b.add(b.mul(b.add(b.mul(co, I64(per_group_in)), ci), I64(KH)), kh), I64(KW)), I64(kw))

    _tiled_correlation(e, op.result, source, _padded_source(op), w, per_group_in, per_group_out, (KH, KW), source_row,
                       lambda kw: left + pw - kw * dw, weight_at)
    return True


def _fast_weight_grad(e, op) -> bool:
    """`conv_weight_grad` by register tiles of output channels by input channels, each entry a sum
    over the output's entries in vectors (then their total) and the columns left over, when the
    column stride is 1."""
    x, g = op.args
    if op.attrs["stride"][-1] != 1:
        return False
    plane = _conv_plane(op, x.type.shape, op.result.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    (sh, dh), (ph, pw), dw = (plane.window.stride[0], plane.window.dilation[0]), plane.window.padding, plane.window.dilation[1]
    c_out, per_group_in = op.result.type.shape[:2]
    per_group_out = c_out // op.attrs["groups"]
    b = e.b
    if _padded_source(op) is None:
        source, (_, source_rows, source_columns) = e.pointer(x), (x.type.shape[0], H, W)
    else:
        source, (_, source_rows, source_columns) = _copy_padded(e, op, x, (H, W), ph, pw), _padded_source(op)
    vector = gemm.width(e)
    full, rest = divmod(OW, vector)
    lanes, scalars = gemm.Lanes(e, vector), gemm.Lanes(e, 1)
    tile_out, tile_in = min(ROWS, per_group_out), min(COLUMN_VECTORS, per_group_in)
    sums = [[e.alloca(lanes.type, name=f"sum{i}.{j}") for j in range(tile_in)] for i in range(tile_out)]
    tails = [[e.alloca(e.float, name=f"tail{i}.{j}") for j in range(tile_in)] for i in range(tile_out)]
    g_pointer, out_pointer = e.pointer(g), e.pointer(op.result)

    def tile(group, co0, c0):
        with e.loop(KH, "kh") as kh:
            with e.loop(KW, "kw") as kw:
                for i in range(tile_out):
                    for j in range(tile_in):
                        b.store(lanes.zero(), sums[i][j])
                        b.store(scalars.zero(), tails[i][j])
                with e.loop(OH, "oh") as oh:
                    g_rows = [b.mul(b.add(b.mul(b.add(co0, I64(i)), I64(OH)), oh), I64(OW)) for i in range(tile_out)]
                    x_row = b.add(b.mul(oh, I64(sh)), b.mul(kh, I64(dh)))
                    x_rows = [b.add(b.mul(b.add(b.mul(b.add(b.mul(group, I64(per_group_in)), b.add(c0, I64(j))),
                                                      I64(source_rows)), x_row), I64(source_columns)), b.mul(kw, I64(dw)))
                              for j in range(tile_in)]

                    def terms(kind, accumulators, ow):
                        gs = [kind.load(g_pointer, b.add(row, ow)) for row in g_rows]
                        xs = [kind.load(source, b.add(row, ow)) for row in x_rows]
                        for i in range(tile_out):
                            for j in range(tile_in):
                                b.store(gemm.fused(e, b.load(accumulators[i][j]), gs[i], xs[j]), accumulators[i][j])
                    if full:
                        with e.loop(full, "ov") as v:
                            terms(lanes, sums, b.mul(v, I64(vector)))
                    for ow in range(full * vector, OW):
                        terms(scalars, tails, I64(ow))
                for i in range(tile_out):
                    for j in range(tile_in):
                        total = b.fadd(lanes.total(b.load(sums[i][j])), b.load(tails[i][j]))
                        at = b.add(b.mul(b.add(b.mul(b.add(b.mul(b.add(co0, I64(i)), I64(per_group_in)), b.add(c0, I64(j))),
                                                     I64(KH)), kh), I64(KW)), kw)
                        b.store(total, b.gep(out_pointer, [at], inbounds=True))

    with e.loop(c_out // per_group_out, "group") as group:
        gemm.covering(e, per_group_out, tile_out, lambda outs: gemm.covering(
            e, per_group_in, tile_in, lambda ins: tile(group, b.add(b.mul(group, I64(per_group_out)), outs[0]), ins[0])))
    return True


def _conv(e, op):
    # out[co, oh, ow] += w[co, cg, kh, kw] * x[ci, ih, ow * sw + shift], over cg, kh, then kw
    if _fast_conv(e, op):
        return
    x, w = op.args
    out = op.result
    plane = _conv_plane(op, x.type.shape, w.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = w.type.shape[0], w.type.shape[1], plane.window.stride[1]
    b = e.b
    e.zero(out)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_out, row_in = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (x.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            weight = e.load(w, _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW)))
            with e.loop(hi - lo, "ow", lo) as ow:
                target = b.add(row_out, ow)
                source = b.add(row_in, b.add(b.mul(ow, I64(sw)), I64(shift)))
                e.store(out, target, b.fadd(e.load(out, target), b.fmul(weight, e.load(x, source))))


def _conv_input_grad(e, op):
    # gx[ci, ih, ow * sw + shift] += w[co, cg, kh, kw] * g[co, oh, ow]: conv's loops, the other way
    if _fast_input_grad(e, op):
        return
    g, w = op.args
    gx = op.result
    plane = _conv_plane(op, gx.type.shape, w.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = w.type.shape[0], w.type.shape[1], plane.window.stride[1]
    b = e.b
    e.zero(gx)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_g, row_x = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (gx.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            weight = e.load(w, _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW)))
            with e.loop(hi - lo, "ow", lo) as ow:
                target = b.add(row_x, b.add(b.mul(ow, I64(sw)), I64(shift)))
                e.store(gx, target, b.fadd(e.load(gx, target), b.fmul(weight, e.load(g, b.add(row_g, ow)))))


def _conv_weight_grad(e, op):
    # gw[co, cg, kh, kw] += sum over ow of g[co, oh, ow] * x[ci, ih, ow * sw + shift], over oh
    if _fast_weight_grad(e, op):
        return
    x, g = op.args
    gw = op.result
    plane = _conv_plane(op, x.type.shape, gw.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = gw.type.shape[0], gw.type.shape[1], plane.window.stride[1]
    b = e.b
    total = e.alloca(e.float, name="dot")
    e.zero(gw)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_g, row_x = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (x.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            b.store(ir.Constant(e.float, 0.0), total)
            with e.loop(hi - lo, "ow", lo) as ow:
                source = b.add(row_x, b.add(b.mul(ow, I64(sw)), I64(shift)))
                b.store(b.fadd(b.load(total), b.fmul(e.load(g, b.add(row_g, ow)), e.load(x, source))), total)
            target = _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW))
            e.store(gw, target, b.fadd(e.load(gw, target), b.load(total)))


# ---- max pooling -------------------------------------------------------------------------------

def _pool(e, op, visit):
    """For each channel and window of pool op `op`: the flat index in x of the window's first maximal
    entry, passed to `visit(c, output offset, index)`."""
    x = op.args[0]
    window = pool_window(op.attrs)
    plane = Plane.of(window, x.type.shape[1:], window.out_shape(x.type.shape[1:]))
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    (sh, sw), (ph, pw) = plane.window.stride, plane.window.padding
    channels, b = x.type.shape[0], e.b
    best, at, found = e.alloca(e.float, name="best"), e.alloca(I64, name="at"), e.alloca(I1, name="found")
    with e.loop(channels, "c") as c:
        with e.loop(OH, "oh") as oh:
            with e.loop(OW, "ow") as ow:
                b.store(I1(0), found)
                b.store(I64(0), at)
                for kh in e.each(KH, "kh"):
                    ih = b.add(b.mul(oh, I64(sh)), b.sub(kh, I64(ph)))
                    with b.if_then(plane.inside(e, ih, 0)):
                        for kw in e.each(KW, "kw"):
                            iw = b.add(b.mul(ow, I64(sw)), b.sub(kw, I64(pw)))
                            with b.if_then(plane.inside(e, iw, 1)):
                                index = _at(e, (c, ih, iw), (channels, H, W))
                                value, current = e.load(x, index), b.load(best)
                                larger = b.or_(b.fcmp_ordered(">", value, current), b.fcmp_unordered("uno", value, value))
                                take = b.or_(b.xor(b.load(found), I1(1)),
                                             b.and_(larger, b.fcmp_ordered("ord", current, current)))
                                b.store(b.select(take, value, current), best)
                                b.store(b.select(take, index, b.load(at)), at)
                                b.store(I1(1), found)
                visit(c, _at(e, (c, oh, ow), (channels, OH, OW)), b.load(at))


def _pool_select(e, op):
    v, out = op.args[1], op.result
    _pool(e, op, lambda c, target, index: e.store(out, target, e.load(v, index)))


def _pool_scatter(e, op):
    g, out = op.args[1], op.result
    e.zero(out)

    def add(c, source, index):
        e.store(out, index, e.b.fadd(e.load(out, index), e.load(g, source)))
    _pool(e, op, add)


EMITTERS = {"conv": _conv, "conv_input_grad": _conv_input_grad, "conv_weight_grad": _conv_weight_grad,
            "pool_select": _pool_select, "pool_scatter": _pool_scatter}
