"""LLVM emitters of the path-sampling primitives: `gate_pack`, `gate_unpack`, `gate_mask`,
`gate_outer_add`, `score_add`.

Each computes exactly what spadc/ir/draws.py computes, operation for operation, so the compiled
estimate and the interpreter's agree to the bit. The kernel supplies three buffers through
`e.options`: `site_data` (SPAD's distributions, doubles), `scores` (site scores, doubles) and
`stored` (one i64 counting the bytes that gates keep on the tape).
"""

from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from . import gemm
from .emitters import I64, stream_key, uniform_loop
from .scalar import call

I32 = ir.IntType(32)

DOUBLE = ir.DoubleType()


def _double(x: float):
    return ir.Constant(DOUBLE, x)


def _key(e, attrs):
    sample = I64(0) if attrs["share"] == "batch" else e.sample
    return stream_key(e, attrs["site"], sample)


def _data(e, index):
    return e.b.load(e.b.gep(e.options["site_data"], [index], inbounds=True))


def _first_above(e, attrs, u):
    """The first i with cdf[i] > u, clamped to d - 1: NumPy's searchsorted(side='right'). A fixed
    sequence of log2(d) halvings, each a step taken or not by integer arithmetic: a branching
    search mispredicted every other step (28% of a SPAD kernel's time on the digits MLP), and LLVM
    turns a select on a loaded value back into a branch. The comparison is of bit patterns: for
    doubles >= +0 (u, and the cdf of non-negative probabilities) their order is that of the
    doubles, and cdf[i] > u exactly when u - cdf[i] is negative as an integer."""
    b = e.b
    d, base = attrs["d"], attrs["data"] + attrs["d"]
    u_bits = b.bitcast(u, I64)

    def above(index):  # 1 if cdf[index] > u, else 0
        cdf_bits = b.bitcast(_data(e, b.add(I64(base), index)), I64)
        return b.lshr(b.sub(u_bits, cdf_bits), I64(63))

    first, remaining = I64(0), d
    while remaining > 1:  # the answer lies in first .. first + remaining
        half = remaining // 2
        first = b.add(first, b.and_(b.sub(above(b.add(first, I64(half))), I64(1)), I64(half)))
        remaining -= half
    found = b.add(first, b.sub(I64(1), above(first)))
    return b.select(b.icmp_signed("<", found, I64(d - 1)), found, I64(d - 1))


@contextmanager
def _draws(e, attrs, key):
    """`for j in 0..k`: (j, entry index, weight) of draw j, with replacement."""
    if attrs["scheme"] == "fixed":  # topk: the k kept entries are in the site data; no randomness
        with e.loop(attrs["k"], "j") as j:
            yield j, e.b.fptosi(_data(e, e.b.add(I64(attrs["data"]), j)), I64), _double(1.0)
        return
    with uniform_loop(e, key, attrs["k"]) as (j, u):
        yield (j, *_draw(e, attrs, u))


@contextmanager
def _entries(e, attrs, key):
    """`for i in 0..d`: (i, kept?, weight) of entry i of a Bernoulli gate."""
    b = e.b
    with uniform_loop(e, key, attrs["d"], "i") as (i, u):
        p = _double(attrs["keep"]) if attrs["scheme"] == "uniform" else _data(e, b.add(I64(attrs["data"]), i))
        yield i, b.fcmp_ordered("<", u, p), b.fdiv(_double(1.0), p)


def _draw(e, attrs, u):
    """(entry index, weight) of a draw with replacement whose uniform is u."""
    b = e.b
    d, k, scheme = attrs["d"], attrs["k"], attrs["scheme"]
    if scheme == "uniform":
        index = b.fptosi(b.fmul(u, _double(float(d))), I64)
        return b.select(b.icmp_signed("<", index, I64(d - 1)), index, I64(d - 1)), _double(d / k)
    index = _first_above(e, attrs, u)
    q = _data(e, b.add(I64(attrs["data"]), index))
    return index, b.fdiv(_double(1.0), b.fmul(_double(float(k)), q))


def _to_float(e, x):
    """A double (weights are computed in double) in the program's float type."""
    return x if e.float == DOUBLE else e.b.fptrunc(x, e.float)


def _widen(e, x):
    """A value of the program's float type as a double (scores are kept in double)."""
    return x if e.float == DOUBLE else e.b.fpext(x, DOUBLE)


def _float_bytes(e) -> int:
    return 8 if e.float == DOUBLE else 4


def _counted(attrs) -> bool:
    """Whether a pack counts its own bytes (not when a cond's record, counted as a whole, holds them)."""
    return attrs["kept"] and attrs.get("counted", True)


def _count(e, nbytes):
    counter = e.options.get("stored")
    if counter is None:  # a forward kernel (a VJP's per-sample sweep under RAD) reports no tape
        return
    e.b.store(e.b.add(e.b.load(counter), nbytes), counter)


def _gate_pack(e, op):
    # with replacement: out[j] = x[idx_j]; Bernoulli: out = the kept entries in order, then zeros
    x, out, attrs = op.args[0], op.result, op.attrs
    b = e.b
    key = _key(e, attrs)
    channels = attrs.get("channels", 1)
    if attrs.get("scores", -1) >= 0:  # score="forward": |x| accumulates where the site is drawn
        with e.loop(attrs["d"], "i") as i:
            at = b.gep(e.options["scores"], [b.add(I64(attrs["scores"]), i)], inbounds=True)
            for c in range(channels):
                b.store(b.fadd(b.load(at), _widen(e, call(e, "llvm.fabs", e.load(x, _value_index(e, attrs, i, c))))), at)

    def keep(position, index, _):
        for c in range(channels):
            e.store(out, b.add(b.mul(position, I64(channels)), I64(c)), e.load(x, _value_index(e, attrs, index, c)))
    count = _for_kept(e, attrs, key, keep)
    if attrs["draw"] != "with_replacement":
        with e.loop(b.sub(I64(attrs["d"] * channels), b.mul(count, I64(channels))), "z", start=b.mul(count, I64(channels))) as j:
            e.store(out, j, ir.Constant(e.float, 0.0))
    if _counted(attrs):
        _count(e, b.mul(count, I64(_float_bytes(e) * channels)))


def _value_index(e, attrs, index, c: int):
    """Where value c of entry `index` is in the gated tensor (spadc/ir/draws.py, value_index)."""
    if attrs.get("channels", 1) == 1:
        return index
    b, inner = e.b, attrs["inner"]
    element = b.mul(b.udiv(index, I64(inner)), I64(attrs["channels"] * inner))
    return b.add(element, b.add(I64(c * inner), b.urem(index, I64(inner))))


def _for_kept(e, attrs, key, body):
    """Call body(position among the kept, entry index, weight as a double) for each kept entry, in
    order: the k draws with replacement, or the entries a Bernoulli draw kept. Returns the count."""
    if attrs["draw"] == "with_replacement":
        with _draws(e, attrs, key) as (j, index, weight):
            body(j, index, weight)
        return I64(attrs["k"])
    b = e.b
    count = e.alloca(I64, "kept")
    b.store(I64(0), count)
    with _entries(e, attrs, key) as (i, kept, weight):
        with b.if_then(kept):
            position = b.load(count)
            body(position, i, weight)
            b.store(b.add(position, I64(1)), count)
    return b.load(count)


def _gate_unpack(e, op):
    # with replacement: out = 0; out[idx_j] += c[j] * w_j; Bernoulli: out[i] = kept_i ? c[next] * w_i : 0
    _rebuild(e, op, lambda j: e.load(op.args[0], j))


def _gate_mask(e, op):
    # the same with every packed value 1
    _rebuild(e, op, None)


def _rebuild(e, op, packed):
    out, attrs = op.result, op.attrs
    b = e.b
    key = _key(e, attrs)
    zero = ir.Constant(e.float, 0.0)
    channels = attrs.get("channels", 1)  # (a mask is of edge sites: one value per entry)
    if attrs["draw"] == "with_replacement":
        with e.loop(attrs["d"] * channels, "i") as i:
            e.store(out, i, zero)
        with _draws(e, attrs, key) as (j, index, weight):
            weight = _to_float(e, weight)
            for c in range(channels):
                value = b.fmul(packed(b.add(b.mul(j, I64(channels)), I64(c))), weight) if packed else weight
                at = _value_index(e, attrs, index, c)
                e.store(out, at, b.fadd(e.load(out, at), value))
        return
    position = e.alloca(I64, "next")
    b.store(I64(0), position)
    with _entries(e, attrs, key) as (i, kept, weight):
        with b.if_else(kept) as (then, otherwise):
            with then:
                at = b.load(position)
                weight = _to_float(e, weight)
                for c in range(channels):
                    value = b.fmul(packed(b.add(b.mul(at, I64(channels)), I64(c))), weight) if packed else weight
                    e.store(out, _value_index(e, attrs, i, c), value)
                b.store(b.add(at, I64(1)), position)
            with otherwise:
                for c in range(channels):
                    e.store(out, _value_index(e, attrs, i, c), zero)


def _gate_outer_add(e, op):
    # out = acc; for each kept entry c of `packed`, at column idx with weight w: out[:, idx] += a * (c * w)
    acc, a, packed = op.args
    out, attrs = op.result, op.attrs
    b = e.b
    e.copy(acc, out)
    m, n = out.type.shape
    key = _key(e, attrs)

    def update(position, column, weight):
        value = b.fmul(e.load(packed, position), _to_float(e, weight))
        with e.loop(m, "i") as i:
            at = b.add(b.mul(i, I64(n)), column)
            e.store(out, at, b.fadd(e.load(out, at), b.fmul(e.load(a, i), value)))

    _for_kept(e, attrs, key, update)


# ---- gate_outer_add over the lanes of a block (spadc/backend/lane_ops.py) -------------------

# Vector accumulators of a tile: its rows (vectors) times its columns (a vector's width). Measured on
# the digits MLP (RAD, batch 32): 16 of 64 bytes beat 8 and 24, and 8, 12 and 16 of 32 bytes, by 2-4%.
TILE_ACCUMULATORS = 16


def _aligned(size: int) -> int:
    return (size + 63) // 64 * 64


def _scratch_layout(op, lanes: int, float_bytes: int):
    """Byte offsets in the scratch of: the draws (column, scaled value) in lane order, the column
    counts, and the draws sorted by column (lane, scaled value); and the total size."""
    draws, n = lanes * op.attrs["k"], op.result.type.shape[1]
    sizes = dict(columns=draws * 8, values=draws * float_bytes, counts=(n + 2) * 8, lanes=draws * 8,
                 sorted_values=draws * float_bytes)
    offsets, total = {}, 0
    for name, size in sizes.items():
        offsets[name] = total
        total += _aligned(size)
    return offsets, total


def lane_scratch_bytes(op, lanes: int, float_bytes: int) -> int:
    return _scratch_layout(op, lanes, float_bytes)[1]


def lane_outer_add(e, op, scratch):
    """out[:, column] += a * value for every lane's draws (with replacement). The draws are listed,
    sorted by column (a counting sort, stable: lane order within a column), then for each tile of
    rows and block of columns summed in registers, one vector of rows per column, turned by shuffles
    into rows and added into the sum. Each entry: out + (its draws' terms summed in lane order), as
    through a zeroed transposed panel. Cost: the kept columns' terms, a pass over the sum, and a
    branch per column and tile."""
    _, a, packed = op.args
    out, attrs = op.result, op.attrs
    b = e.b
    m, n = out.type.shape
    k = attrs["k"]
    offsets, _ = _scratch_layout(op, e.plan.lanes, _float_bytes(e))

    def array(name, element):
        return b.bitcast(b.gep(scratch, [I64(offsets[name])]), element.as_pointer())

    columns, values, counts = array("columns", I64), array("values", e.float), array("counts", I64)
    lanes, sorted_values = array("lanes", I64), array("sorted_values", e.float)
    with e.samples() as local:
        first = b.mul(local, I64(k))
        with _draws(e, attrs, _key(e, attrs)) as (j, index, weight):
            at = b.add(first, j)
            b.store(index, b.gep(columns, [at], inbounds=True))
            b.store(b.fmul(e.load(packed, j), _to_float(e, weight)), b.gep(values, [at], inbounds=True))
    _sort_by_column(e, columns, values, counts, lanes, sorted_values, b.mul(e.count, I64(k)), k, n)

    def column_sum(vector, top, vectors, column):
        """The draws of `column` summed over `vectors` vectors of rows from `top`: accumulators."""
        accumulators = [e.alloca(vector.type, "sum") for _ in range(vectors)]
        for accumulator in accumulators:
            b.store(vector.zero(), accumulator)
        begin, end = (b.load(b.gep(counts, [b.add(column, I64(shift))], inbounds=True)) for shift in (0, 1))
        with e.loop(b.sub(end, begin), "draw", start=begin) as d:
            lane = b.load(b.gep(lanes, [d], inbounds=True))
            scale = vector.splat(b.load(b.gep(sorted_values, [d], inbounds=True)))
            g = e.lane_pointer(a, lane)
            for u, accumulator in enumerate(accumulators):
                row = vector.load(g, b.add(top, I64(u * vector.width)))
                b.store(gemm.fused(e, b.load(accumulator), scale, row), accumulator)
        return [b.load(accumulator) for accumulator in accumulators]

    target = e.pointer(out)

    def add(row, column, value):
        at = b.gep(target, [b.add(b.mul(row, I64(n)), column)], inbounds=True)
        b.store(b.fadd(b.load(at), value), at)

    def tile(vector, top, vectors):
        """Rows top .. top + vectors * width, all columns."""
        width = vector.width
        with e.loop(n // width, "block") as block:
            left = b.mul(block, I64(width))
            sums = [column_sum(vector, top, vectors, b.add(left, I64(c))) for c in range(width)]
            for u in range(vectors):
                turned = vector.transpose([sums[c][u] for c in range(width)]) if width > 1 else [sums[0][u]]
                for r, row in enumerate(turned):
                    at = b.add(b.mul(b.add(top, I64(u * width + r)), I64(n)), left)
                    vector.store(b.fadd(vector.load(target, at), row), target, at)
        if n % width:
            with e.loop(n % width, "c", start=n - n % width) as c:
                for u, total in enumerate(column_sum(vector, top, vectors, c)):
                    for r in range(width):
                        add(b.add(top, I64(u * width + r)), c, b.extract_element(total, I32(r)))

    vector = gemm.Lanes(e, gemm.width(e, wide=True))
    per_tile = max(1, TILE_ACCUMULATORS // vector.width)
    whole = m // (per_tile * vector.width)
    if whole:
        with e.loop(whole, "tile") as t:
            tile(vector, b.mul(t, I64(per_tile * vector.width)), per_tile)
    top = whole * per_tile * vector.width
    if m - top >= vector.width:
        vectors = (m - top) // vector.width
        tile(vector, I64(top), vectors)
        top += vectors * vector.width
    if m > top:  # the last rows, fewer than a vector: one scalar per row and column
        tile(gemm.Lanes(e, 1), I64(top), m - top)


def _sort_by_column(e, columns, values, counts, lanes, sorted_values, draws, k: int, n: int):
    """Counting sort of the draws by column, stable. Afterwards column c's draws are
    counts[c] .. counts[c + 1] of (lanes, sorted_values)."""
    b = e.b
    with e.loop(n + 2, "c") as c:
        b.store(I64(0), b.gep(counts, [c], inbounds=True))

    def slot(d, shift):
        return b.gep(counts, [b.add(b.load(b.gep(columns, [d], inbounds=True)), I64(shift))], inbounds=True)

    with e.loop(draws, "d") as d:  # counts[c + 2] = draws of column c
        at = slot(d, 2)
        b.store(b.add(b.load(at), I64(1)), at)
    with e.loop(n, "c", start=2) as c:  # counts[c + 1] = draws of the columns before c
        at = b.gep(counts, [c], inbounds=True)
        b.store(b.add(b.load(at), b.load(b.gep(counts, [b.sub(c, I64(1))], inbounds=True))), at)
    with e.loop(draws, "d") as d:  # counts[c + 1] advances to the end of c's draws
        at = slot(d, 1)
        position = b.load(at)
        b.store(b.add(position, I64(1)), at)
        b.store(b.sdiv(d, I64(k)), b.gep(lanes, [position], inbounds=True))
        b.store(b.load(b.gep(values, [d], inbounds=True)), b.gep(sorted_values, [position], inbounds=True))


def _score_add(e, op):
    # scores[offset + sum(row_l * stride_l) + j] += |values[j]|; the result is the values themselves
    values, *rows = op.args
    b = e.b
    start = I64(op.attrs["offset"])
    for row, stride in zip(rows, op.attrs["strides"]):
        start = b.add(start, b.mul(e.load(row), I64(stride)))
    with e.loop(max(values.type.size, 1), "j") as j:
        value = e.load(values, j)
        at = b.gep(e.options["scores"], [b.add(start, j)], inbounds=True)
        b.store(b.fadd(b.load(at), _widen(e, call(e, "llvm.fabs", value))), at)
        e.store(op.result, j, value)


GATE_EMITTERS = {"gate_pack": _gate_pack, "gate_unpack": _gate_unpack, "gate_mask": _gate_mask,
                 "gate_outer_add": _gate_outer_add, "score_add": _score_add}
