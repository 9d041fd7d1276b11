"""LLVM for convolution and max pooling over one sample (spadc/ir/conv.py has their records and
NumPy references).

A one-dimensional op is emitted as a two-dimensional one of height 1. Each of the three
convolutions is register tiles whose inner loops run along output columns in vectors:
- `conv` and `conv_input_grad` are one correlation (`_correlate`): a tile of ROWS result channels by
  `tile_columns()` vectors of result columns sums, over the channels of its group, the kernel rows and
  the kernel columns in that order, a weight times a run of a source row;
- `conv_weight_grad` sums, per tile of ROWS output channels by `tile_columns()` input channels and
  per kernel position,
  the products of the output's adjoint and the input along every output row, in vectors (then their
  total) and the columns left over.
They read a zero-padded copy of their source in planned scratch (`Layout`), so no inner loop tests
a border. A column stride s > 1 splits each copied row into s phases (padded column t at
(t % s) * ceil(width / s) + t // s), so the columns a kernel column meets are again a contiguous run;
`conv_input_grad` then computes the input columns of each residue modulo s as a correlation of its
own (the kernel columns that reach it) into scratch, and spreads them into place.

Invariants: no load or store outside an operand, the result or the op's scratch; every entry of a
result is written once per tile that covers it (tiles at the ends overlap their neighbours and
write the same value: each entry is summed in one order whatever its tile); a result never shares
storage with an operand; a pool's window search keeps the first maximal entry (a NaN counts as
maximal), as `spadc.ir.conv.pool_choices` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ..ir.conv import Window, conv_geometry, conv_window, pool_window
from . import gates, gemm
from .target import has_wide_vectors

I1, I64 = ir.IntType(1), ir.IntType(64)
ROWS = 4  # result channels per register tile (by `tile_columns()` vectors of result columns)
UNROLLED_VECTORS = 4  # vectors of a weight gradient's row written out rather than looped over


def tile_columns() -> int:
    """A register tile's second side, by ROWS: vectors of result columns (a correlation), input
    channels (the weight gradient). 4 where the machine has 32 vector registers (AVX-512: 16
    accumulators beside their 8 operands), else 2. Two FMA units of 4 cycles' latency keep 8 FMAs in
    flight: 8 accumulators leave no slack. On Zen 4, batch 150, f32: the weight gradient of 32
    channels of 16 x 16 took 20.4 ms where it took 21.8 (78.8 to 77.2 ms with its forward in f64),
    the forward of 16 to 32 channels of 32 x 32 40.2 ms where 42.8, its input gradient 36.2 where
    39.7. (Rows of 2 vectors keep 4 x 2: 8 x 2 tiles, many broadcasts, were slower.)"""
    return 4 if has_wide_vectors() else 2


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

    def inside(self, e, index, axis: int):
        return e.b.icmp_unsigned("<", index, I64(self.input[axis]))


def _conv_plane(op) -> Plane:
    """The geometry of the conv that a conv op (or either transpose of it) belongs to."""
    window, x_shape, _ = conv_geometry(op)
    return Plane.of(window, x_shape[1:], window.out_shape(x_shape[1:]))


def _at(e, indices, shape):
    """The row-major offset of a multi-index (LLVM values or ints) in a tensor of `shape`."""
    b, offset = e.b, I64(0)
    for index, size in zip(indices, shape):
        offset = b.add(b.mul(offset, I64(size)), index if isinstance(index, ir.Value) else I64(index))
    return offset


# ---- the copies the tiles read ------------------------------------------------------------------

@dataclass(frozen=True)
class Copy:
    """A [channels, rows, columns] copy of a source of [channels, height, width], placed at (top, left)
    among zeros, each row split into `stride` phases of `phase` columns (padded column t at
    (t % stride) * phase + t // stride)."""
    channels: int
    rows: int
    columns: int
    top: int
    left: int
    stride: int = 1

    @property
    def phase(self) -> int:
        return -(-self.columns // self.stride)

    @property
    def row(self) -> int:
        """Entries from one row of the copy to the next."""
        return self.phase * self.stride

    @property
    def size(self) -> int:
        return self.channels * self.rows * self.row

    def column(self, t: int) -> int:
        """Where padded column t is within its row."""
        return (t % self.stride) * self.phase + t // self.stride


@dataclass(frozen=True)
class Layout:
    """What a convolution op reads (a copy in scratch, or None: its operand as it is) and the
    scratch for the input gradient's residues (`spread` entries; 0 when the stride is 1)."""
    copy: Copy | None
    spread: int = 0


def _layout(op) -> Layout:
    plane = _conv_plane(op)
    (H, W), (OH, OW) = plane.input, plane.output
    (ph, pw), sw = plane.window.padding, plane.window.stride[1]
    if op.kind in ("conv", "conv_weight_grad"):
        if ph == pw == 0 and sw == 1:
            return Layout(None)
        return Layout(Copy(op.args[0].type.shape[0], H + 2 * ph, W + 2 * pw, ph, pw, sw))
    left, right = _residues(plane)[1:]
    spread = 0 if sw == 1 else op.result.type.shape[0] * H * -(-W // sw)
    return Layout(Copy(op.args[0].type.shape[0], OH, left + OW + right, 0, left), spread)


def _residues(plane: Plane):
    """For the input gradient: per residue r of the input columns modulo the stride, (r, how many
    columns have it, [(kernel column, the output column offset its input column m * s + r reads)]),
    and the zero columns the output's adjoint needs before and after it for every read to land."""
    (W, OW), s = (plane.input[1], plane.output[1]), plane.window.stride[1]
    pw, dw, KW = plane.window.padding[1], plane.window.dilation[1], plane.window.kernel[1]
    found = []
    for r in range(min(s, W)):
        base = (r + pw) // s  # input column m * s + r is output column m + base - (kw * dw) // s
        taps = [(kw, base - kw * dw // s) for kw in range(KW) if kw * dw % s == (r + pw) % s]
        found.append((r, len(range(r, W, s)), taps))
    shifts = [(count, shift) for _, count, taps in found for _, shift in taps]
    left = max([0] + [-shift for _, shift in shifts])
    right = max([0] + [count - 1 + shift - (OW - 1) for count, shift in shifts])
    return found, left, right


def scratch_bytes(op, float_bytes: int) -> int:
    """Workspace a convolution op needs while it runs (spadc/backend/memory.py plans it)."""
    if op.kind == "gate_conv_weight_grad":  # its sums, by kernel position
        return op.result.type.size * float_bytes
    if op.kind not in ("conv", "conv_input_grad", "conv_weight_grad"):
        return 0
    layout = _layout(op)
    return ((layout.copy.size if layout.copy else 0) + layout.spread) * float_bytes


def _copy_in(e, op, source, copy: Copy):
    """The op's scratch holding `copy` of `source` ([channels, height, width]): its pointer."""
    b = e.b
    pointer = b.bitcast(e.scratch(op), e.float.as_pointer())
    height, width = (source.type.shape[1] if source.type.rank == 3 else 1), source.type.shape[-1]
    with e.loop(copy.size, "zero") as j:
        b.store(ir.Constant(e.float, 0.0), b.gep(pointer, [j], inbounds=True))
    with e.loop(copy.channels * height, "row") as row:
        c, y = b.udiv(row, I64(height)), b.urem(row, I64(height))
        start = b.mul(b.add(b.mul(c, I64(copy.rows)), b.add(y, I64(copy.top))), I64(copy.row))
        with e.loop(width, "column") as x:
            t = b.add(x, I64(copy.left))
            at = b.add(b.mul(b.urem(t, I64(copy.stride)), I64(copy.phase)), b.udiv(t, I64(copy.stride)))
            b.store(e.load(source, b.add(b.mul(row, I64(width)), x)), b.gep(pointer, [b.add(start, at)], inbounds=True))
    return pointer


def _source(e, op, operand):
    """(pointer, Copy describing it) of what the op's tiles read of `operand`."""
    copy = _layout(op).copy
    if copy is None:
        height, width = _conv_plane(op).input
        return e.pointer(operand), Copy(operand.type.shape[0], height, width, 0, 0)
    return _copy_in(e, op, operand, copy), copy


# ---- conv and its input gradient: one correlation ------------------------------------------------

def _correlate(e, out, shape, source, copy: Copy, weights, rows_per_group: int, channels_per_group: int,
               KH: int, source_row, taps, weight_at, stacked: bool = False):
    """out ([rows, height, width] at pointer `out`)[r, y, x] = the sum over c of r's group, kh and
    (kw, offset) in `taps` (in that order) of weights[weight_at(r, group, c, kh, kw)] times the copy's
    entry at channel group * channels_per_group + c, row `source_row(y, kh)[0]` (when its second
    value holds, else nothing) and column x + offset."""
    b = e.b
    rows, height, width = shape
    vector = gemm.width(e) if width >= gemm.width(e) else 1
    lanes = gemm.Lanes(e, vector)
    vectors = min(tile_columns(), width // vector)
    # With `stacked` (every source row contributes), a tile of narrow rows takes several: the forward
    # of 32 channels of 16 x 16 (two vectors a row) 20.3 -> 19.1 ms at two. Where a row's
    # contribution is tested (the input gradient), the tests split the FMAs: 18.8 -> 19.5 ms.
    lines = min(max(tile_columns() // vectors, 1), height) if stacked else 1  # result rows per tile
    tile_rows = min(ROWS, rows_per_group)
    accumulators = [[[e.alloca(lanes.type, name=f"acc{i}.{k}.{j}") for j in range(vectors)] for k in range(lines)]
                    for i in range(tile_rows)]

    def tile(group, r0, ys, x0):
        for accumulator in (a for row in accumulators for line in row for a in line):
            b.store(lanes.zero(), accumulator)
        with e.loop(channels_per_group, "c") as c:
            channel = b.add(b.mul(group, I64(channels_per_group)), c)
            with e.loop(KH, "kh") as kh:
                for k, y in enumerate(ys):
                    source_y, contributes = source_row(y, kh)
                    with b.if_then(contributes):
                        line = b.add(b.mul(b.add(b.mul(channel, I64(copy.rows)), source_y), I64(copy.row)), x0)
                        for kw, offset in taps:
                            start = b.add(line, I64(offset))
                            xs = [lanes.load(source, b.add(start, I64(j * vector))) for j in range(vectors)]
                            for i in range(tile_rows):
                                weight = lanes.splat(e.load(weights, weight_at(b.add(r0, I64(i)), group, c, kh, kw)))
                                for j in range(vectors):
                                    b.store(gemm.fused(e, b.load(accumulators[i][k][j]), weight, xs[j]),
                                            accumulators[i][k][j])
        for i in range(tile_rows):
            for k, y in enumerate(ys):
                base = b.add(b.mul(b.add(b.mul(b.add(r0, I64(i)), I64(height)), y), I64(width)), x0)
                for j in range(vectors):
                    lanes.store(b.load(accumulators[i][k][j]), out, b.add(base, I64(j * vector)))

    with e.loop(rows // rows_per_group, "group") as group:
        def over_rows(row_indices):
            r0 = b.add(b.mul(group, I64(rows_per_group)), row_indices[0])
            gemm.covering(e, height, lines, lambda ys: gemm.covering(
                e, width, vector * vectors, lambda columns: tile(group, r0, ys, columns[0])))
        gemm.covering(e, rows_per_group, tile_rows, over_rows)


def _conv(e, op):
    x, w = op.args
    plane = _conv_plane(op)
    KH, KW = plane.window.kernel
    sh, dh, dw = plane.window.stride[0], plane.window.dilation[0], plane.window.dilation[1]
    c_out, per_group_in = w.type.shape[:2]
    b = e.b
    source, copy = _source(e, op, x)

    def weight_at(r, group, c, kh, kw):  # w[r, c, kh, kw]
        return b.add(b.mul(b.add(b.mul(b.add(b.mul(r, I64(per_group_in)), c), I64(KH)), kh), I64(KW)), I64(kw))
    _correlate(e, e.pointer(op.result), (c_out,) + plane.output, source, copy, w, c_out // op.attrs["groups"],
               per_group_in, KH, lambda y, kh: (b.add(b.mul(y, I64(sh)), b.mul(kh, I64(dh))), I1(1)),
               [(kw, copy.column(kw * dw)) for kw in range(KW)], weight_at, stacked=True)


def _conv_input_grad(e, op):
    g, w = op.args
    plane = _conv_plane(op)
    (H, W), OH = plane.input, plane.output[0]
    KH, KW = plane.window.kernel
    sh, sw, dh, ph = plane.window.stride[0], plane.window.stride[1], plane.window.dilation[0], plane.window.padding[0]
    c_out, per_group_in = w.type.shape[:2]
    c_in, per_group_out = op.result.type.shape[0], c_out // op.attrs["groups"]
    b = e.b
    source, copy = _source(e, op, g)
    residues, left, _ = _residues(plane)

    def source_row(y, kh):  # the output row (ih + ph - kh * dh) / sh, when whole and inside
        shifted = b.sub(b.add(y, I64(ph)), b.mul(kh, I64(dh)))
        oh = b.sdiv(shifted, I64(sh))
        inside = b.and_(b.icmp_signed("==", b.mul(oh, I64(sh)), shifted),
                        b.and_(b.icmp_signed(">=", shifted, I64(0)), b.icmp_signed("<", oh, I64(OH))))
        return oh, inside

    def weight_at(r, group, c, kh, kw):  # w[group * per_group_out + c, r - group * per_group_in, kh, kw]
        co, ci = b.add(b.mul(group, I64(per_group_out)), c), b.sub(r, b.mul(group, I64(per_group_in)))
        return b.add(b.mul(b.add(b.mul(b.add(b.mul(co, I64(per_group_in)), ci), I64(KH)), kh), I64(KW)), I64(kw))

    if sw == 1:
        ((_, _, taps),) = residues
        _correlate(e, e.pointer(op.result), (c_in, H, W), source, copy, w, per_group_in, per_group_out, KH, source_row,
                   [(kw, left + shift) for kw, shift in taps], weight_at)
        return
    spread = b.gep(b.bitcast(e.scratch(op), e.float.as_pointer()), [I64(copy.size)], inbounds=True)
    out = e.pointer(op.result)
    for r, count, taps in residues:  # input columns m * sw + r, as a correlation into `spread`, then in place
        if taps:
            _correlate(e, spread, (c_in, H, count), source, copy, w, per_group_in, per_group_out, KH, source_row,
                       [(kw, left + shift) for kw, shift in taps], weight_at)
        with e.loop(c_in * H, "line") as line:
            with e.loop(count, "m") as m:
                value = b.load(b.gep(spread, [b.add(b.mul(line, I64(count)), m)], inbounds=True)) if taps else \
                    ir.Constant(e.float, 0.0)
                at = b.add(b.mul(line, I64(W)), b.add(b.mul(m, I64(sw)), I64(r)))
                b.store(value, b.gep(out, [at], inbounds=True))


def _conv_weight_grad(e, op):
    # gw[co, c, kh, kw] = the sum over output rows and columns of g[co, oh, ow] * x[ci, row, column],
    # in vectors along the columns, then their total and the columns left over
    x, g = op.args
    plane = _conv_plane(op)
    (OH, OW), (KH, KW) = plane.output, plane.window.kernel
    sh, dh, dw = plane.window.stride[0], plane.window.dilation[0], plane.window.dilation[1]
    c_out, per_group_in = op.result.type.shape[:2]
    per_group_out = c_out // op.attrs["groups"]
    b = e.b
    source, copy = _source(e, op, x)
    vector = gemm.width(e)
    full = OW // vector
    lanes, scalars = gemm.Lanes(e, vector), gemm.Lanes(e, 1)
    tile_out, tile_in = min(ROWS, per_group_out), min(tile_columns(), per_group_in)
    sums = [[e.alloca(lanes.type, name=f"sum{i}.{j}") for j in range(tile_in)] for i in range(tile_out)]
    tails = [[e.alloca(e.float, name=f"tail{i}.{j}") for j in range(tile_in)] for i in range(tile_out)]
    g_pointer, out_pointer = e.pointer(g), e.pointer(op.result)

    def tile(group, co0, c0):
        with e.loop(KH, "kh") as kh, e.loop(KW, "kw") as kw:
            reach = b.mul(kw, I64(dw))  # padded column kw * dw, where the copy keeps it (Copy.column)
            column = b.add(b.mul(b.urem(reach, I64(copy.stride)), I64(copy.phase)), b.udiv(reach, I64(copy.stride)))
            for accumulator in (a for row in sums for a in row):
                b.store(lanes.zero(), accumulator)
            for accumulator in (a for row in tails for a in row):
                b.store(scalars.zero(), accumulator)
            # Each row of g and of the copy at oh is its row at oh = 0 plus oh times one stride: the
            # bases are made once per (kh, kw), so a row's step costs two offsets, not the index
            # arithmetic of six rows (which left the loop issue-bound: 59 instructions for 16 FMAs).
            g_bases = [b.gep(g_pointer, [b.mul(b.add(co0, I64(i)), I64(OH * OW))], inbounds=True)
                       for i in range(tile_out)]
            channels = [b.add(b.mul(group, I64(per_group_in)), b.add(c0, I64(j))) for j in range(tile_in)]
            x_bases = [b.gep(source, [b.add(b.mul(b.add(b.mul(channel, I64(copy.rows)), b.mul(kh, I64(dh))),
                                                  I64(copy.row)), column)], inbounds=True)
                       for channel in channels]
            with e.loop(OH, "oh") as oh:
                g_row, x_row = b.mul(oh, I64(OW)), b.mul(oh, I64(sh * copy.row))

                def terms(kind, accumulators, ow):
                    gs = [kind.load(base, b.add(g_row, ow)) for base in g_bases]
                    xs = [kind.load(base, b.add(x_row, ow)) for base in x_bases]
                    for i in range(tile_out):
                        for j in range(tile_in):
                            b.store(gemm.fused(e, b.load(accumulators[i][j]), gs[i], xs[j]), accumulators[i][j])
                if 0 < full <= UNROLLED_VECTORS:
                    for v in range(full):
                        terms(lanes, sums, I64(v * vector))
                elif full:
                    with e.loop(full, "ov") as v:
                        terms(lanes, sums, b.mul(v, I64(vector)))
                for ow in range(full * vector, OW):
                    terms(scalars, tails, I64(ow))
            totals = _totals(lanes, [[b.load(a) for a in row] for row in sums]) if full else None
            for i in range(tile_out):
                for j in range(tile_in):
                    vector_total = totals[i][j] if totals else lanes.total(b.load(sums[i][j]))
                    total = b.fadd(vector_total, b.load(tails[i][j]))
                    at = b.add(b.mul(b.add(b.mul(b.add(b.mul(b.add(co0, I64(i)), I64(per_group_in)), b.add(c0, I64(j))),
                                                 I64(KH)), kh), I64(KW)), kw)
                    b.store(total, b.gep(out_pointer, [at], inbounds=True))

    with e.loop(c_out // per_group_out, "group") as group:
        gemm.covering(e, per_group_out, tile_out, lambda outs: gemm.covering(
            e, per_group_in, tile_in, lambda ins: tile(group, b.add(b.mul(group, I64(per_group_out)), outs[0]), ins[0])))


def _totals(lanes, sums):
    """total(v) for each vector of the rows `sums`, the same pairwise sums as `Lanes.total`: as many
    at a time as a vector has entries by one `Lanes.totals` (its shuffles bring lanes side by side:
    7 merges for 8 vectors of 8, where a total each takes 8 extracts and 7 adds), the rest alone."""
    flat = [(i, j) for i, row in enumerate(sums) for j in range(len(row))]
    totals = [[None] * len(row) for row in sums]
    whole = len(flat) - len(flat) % lanes.width if lanes.width > 1 else 0
    for start in range(0, whole, lanes.width):
        group = flat[start:start + lanes.width]
        combined = lanes.totals([sums[i][j] for i, j in group])
        for k, (i, j) in enumerate(group):
            totals[i][j] = lanes.b.extract_element(combined, ir.IntType(32)(k))
    for i, j in flat[whole:]:
        totals[i][j] = lanes.total(sums[i][j])
    return totals


def _gate_conv_weight_grad(e, op):
    # sums[kh, kw, co, c] += g[co, oh, ow] * (packed[j, c] * weight_j) for each kept position j and
    # each kernel position that reaches an output from it (ir/draws.py: conv_weight_grad), then
    # out[co, c, kh, kw] = sums[kh, kw, co, c]: the inner loop runs along c, contiguous
    packed, g = op.args
    attrs, out = op.attrs, op.result
    channels = attrs.get("channels", 1)
    window = conv_window(attrs, tuple(attrs["kernel"]))
    plane = Plane.of(window, tuple(attrs["shape"][1:]), g.type.shape[1:])
    W, (OH, OW), (KH, KW) = plane.input[1], plane.output, plane.window.kernel
    c_out, per_in = out.type.shape[:2]
    per_out = c_out // attrs["groups"]
    b = e.b
    sums = b.bitcast(e.scratch(op), e.float.as_pointer())
    with e.loop(out.type.size, "zero") as j:
        b.store(ir.Constant(e.float, 0.0), b.gep(sums, [j], inbounds=True))

    def output_at(position, k, axis):  # (the output index that kernel index k reaches from `position`, reached?)
        shifted = b.sub(b.add(position, I64(plane.window.padding[axis])), b.mul(k, I64(plane.window.dilation[axis])))
        stride = I64(plane.window.stride[axis])
        index = b.sdiv(shifted, stride)
        reached = b.and_(b.icmp_signed("==", b.mul(index, stride), shifted),
                         b.and_(b.icmp_signed(">=", shifted, I64(0)), b.icmp_signed("<", index, I64(plane.output[axis]))))
        return index, reached

    def add(j, index, weight):
        weight = gates._to_float(e, weight)
        ih, iw = b.udiv(index, I64(W)), b.urem(index, I64(W))
        with e.loop(KH, "kh") as kh, e.loop(KW, "kw") as kw:
            oh, row_reached = output_at(ih, kh, 0)
            ow, column_reached = output_at(iw, kw, 1)
            with b.if_then(b.and_(row_reached, column_reached)):
                with e.loop(c_out, "co") as co:
                    g_value = e.load(g, _at(e, (co, oh, ow), (c_out, OH, OW)))
                    first = b.add(b.mul(j, I64(channels)), b.mul(b.udiv(co, I64(per_out)), I64(per_in)))
                    row = b.mul(b.add(b.mul(b.add(b.mul(kh, I64(KW)), kw), I64(c_out)), co), I64(per_in))
                    with e.loop(per_in, "c") as c:
                        value = b.fmul(e.load(packed, b.add(first, c)), weight)
                        at = b.gep(sums, [b.add(row, c)], inbounds=True)
                        b.store(b.fadd(b.load(at), b.fmul(g_value, value)), at)
    gates._for_kept(e, attrs, gates._key(e, attrs), add)
    with e.loop(c_out * per_in, "entry") as entry:
        with e.loop(KH * KW, "k") as k:
            e.store(out, b.add(b.mul(entry, I64(KH * KW)), k),
                    b.load(b.gep(sums, [b.add(b.mul(k, I64(c_out * per_in)), entry)], inbounds=True)))


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
            "gate_conv_weight_grad": _gate_conv_weight_grad,
            "pool_select": _pool_select, "pool_scatter": _pool_scatter}
