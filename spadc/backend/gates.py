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

DOUBLE = ir.DoubleType()


def _double(x: float):
    return ir.Constant(DOUBLE, x)


def _key(e, attrs):
    sample = I64(0) if attrs["share"] == "batch" else e.sample
    return stream_key(e, attrs["site"], sample)


def _data(e, index):
    return e.b.load(e.b.gep(e.options["site_data"], [index], inbounds=True))


def _first_above(e, attrs, u):
    """The first i with cdf[i] > u (binary search), clamped to d - 1: NumPy's searchsorted(side='right')."""
    b = e.b
    d, base = attrs["d"], attrs["data"] + attrs["d"]
    lo, hi = e.alloca(I64, "lo"), e.alloca(I64, "hi")
    b.store(I64(0), lo)
    b.store(I64(d), hi)
    head, body, done = (b.append_basic_block(name) for name in ("search.head", "search.body", "search.done"))
    b.branch(head)
    b.position_at_end(head)
    b.cbranch(b.icmp_signed("<", b.load(lo), b.load(hi)), body, done)
    b.position_at_end(body)
    low, high = b.load(lo), b.load(hi)
    mid = b.ashr(b.add(low, high), I64(1))
    above = b.fcmp_ordered(">", _data(e, b.add(I64(base), mid)), u)
    b.store(b.select(above, low, b.add(mid, I64(1))), lo)
    b.store(b.select(above, mid, high), hi)
    b.branch(head)
    b.position_at_end(done)
    found = b.load(lo)
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
    counter = e.options["stored"]
    e.b.store(e.b.add(e.b.load(counter), nbytes), counter)


def _gate_pack(e, op):
    # with replacement: out[j] = x[idx_j]; Bernoulli: out = the kept entries in order, then zeros
    x, out, attrs = op.args[0], op.result, op.attrs
    b = e.b
    key = _key(e, attrs)
    if attrs.get("scores", -1) >= 0:  # score="forward": |x| accumulates where the site is drawn
        with e.loop(attrs["d"], "i") as i:
            at = b.gep(e.options["scores"], [b.add(I64(attrs["scores"]), i)], inbounds=True)
            b.store(b.fadd(b.load(at), _widen(e, call(e, "llvm.fabs", e.load(x, i)))), at)
    count = _for_kept(e, attrs, key, lambda position, index, _: e.store(out, position, e.load(x, index)))
    if attrs["draw"] != "with_replacement":
        with e.loop(b.sub(I64(attrs["d"]), count), "z", start=count) as j:
            e.store(out, j, ir.Constant(e.float, 0.0))
    if _counted(attrs):
        _count(e, b.mul(count, I64(_float_bytes(e))))


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
    if attrs["draw"] == "with_replacement":
        with e.loop(attrs["d"], "i") as i:
            e.store(out, i, zero)
        with _draws(e, attrs, key) as (j, index, weight):
            weight = _to_float(e, weight)
            value = b.fmul(packed(j), weight) if packed else weight
            e.store(out, index, b.fadd(e.load(out, index), value))
        return
    position = e.alloca(I64, "next")
    b.store(I64(0), position)
    with _entries(e, attrs, key) as (i, kept, weight):
        with b.if_else(kept) as (then, otherwise):
            with then:
                at = b.load(position)
                weight = _to_float(e, weight)
                e.store(out, i, b.fmul(packed(at), weight) if packed else weight)
                b.store(b.add(at, I64(1)), position)
            with otherwise:
                e.store(out, i, zero)


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

PANEL_VECTORS = 4  # rows of the running sum per transposed panel, in vectors


def _panel_rows(float_bytes: int) -> int:
    return PANEL_VECTORS * gemm.VECTOR_BYTES // float_bytes


def _aligned(size: int) -> int:
    return (size + 63) // 64 * 64


def lane_scratch_bytes(op, lanes: int, float_bytes: int) -> int:
    """Every lane's draws (column, scaled value), and one transposed panel of the running sum."""
    k, n = op.attrs["k"], op.result.type.shape[1]
    return _aligned(lanes * k * 8) + _aligned(lanes * k * float_bytes) + n * _panel_rows(float_bytes) * float_bytes


def lane_outer_add(e, op, scratch):
    """out[:, column] += a * value for every lane's draws (with replacement): the draws are listed
    first; then, panel by panel of rows, added into a transposed panel T[column, row] (contiguous:
    a vector per draw and row group) that is then added into the panel's rows. Rows below a whole
    panel take the draws straight. Cost: the kept columns, plus a pass over the sum per block."""
    _, a, packed = op.args
    out, attrs = op.result, op.attrs
    b = e.b
    m, n = out.type.shape
    k = attrs["k"]
    float_bytes = _float_bytes(e)
    columns = b.bitcast(scratch, I64.as_pointer())
    values_at = b.gep(scratch, [I64(_aligned(e.plan.lanes * k * 8))])
    values = b.bitcast(values_at, e.float.as_pointer())
    panel_at = b.gep(values_at, [I64(_aligned(e.plan.lanes * k * float_bytes))])
    panel = b.bitcast(panel_at, e.float.as_pointer())
    target = e.pointer(out)
    with e.samples() as local:
        first = b.mul(local, I64(k))
        with _draws(e, attrs, _key(e, attrs)) as (j, index, weight):
            at = b.add(first, j)
            b.store(index, b.gep(columns, [at], inbounds=True))
            b.store(b.fmul(e.load(packed, j), _to_float(e, weight)), b.gep(values, [at], inbounds=True))
    vector = gemm.Lanes(e, gemm.width(e))
    rows = _panel_rows(float_bytes)
    whole = m // rows

    def draws(per_lane, body):
        """For each lane s: what `per_lane(s)` reads once, then body(that, column, value) per draw."""
        with e.loop(e.count, "s") as s:
            read = per_lane(s)
            with e.loop(k, "j") as j:
                at = b.add(b.mul(s, I64(k)), j)
                body(read, b.load(b.gep(columns, [at], inbounds=True)), b.load(b.gep(values, [at], inbounds=True)))

    if whole:
        with e.loop(whole, "panel") as p:
            top = b.mul(p, I64(rows))
            with e.loop(n * PANEL_VECTORS, "z") as z:
                vector.store(vector.zero(), panel, b.mul(z, I64(vector.width)))

            def rows_of(s):  # the lane's a over the panel's rows: loaded once for all its draws
                g = e.lane_pointer(a, s)
                return [vector.load(g, b.add(top, I64(u * vector.width))) for u in range(PANEL_VECTORS)]

            def add(row, column, value):
                scale = vector.splat(value)
                for u in range(PANEL_VECTORS):
                    at = b.add(b.mul(column, I64(rows)), I64(u * vector.width))
                    vector.store(gemm.fused(e, vector.load(panel, at), scale, row[u]), panel, at)

            draws(rows_of, add)
            _add_transposed(e, vector, panel, rows, target, top, n)
    if m > whole * rows:
        with e.loop(m - whole * rows, "r", start=whole * rows) as r:
            def add_row(g, column, value):
                at = b.gep(target, [b.add(b.mul(r, I64(n)), column)], inbounds=True)
                b.store(gemm.fused(e, b.load(at), g, value), at)

            draws(lambda s: b.load(b.gep(e.lane_pointer(a, s), [r], inbounds=True)), add_row)


def _add_transposed(e, vector, panel, rows: int, target, top, n: int):
    """target[top + r, c] += panel[c, r] for r < rows, c < n: blocks of vector x vector entries
    turned by shuffles (a vector a row of the target), the columns past the last block one by one."""
    b, width = e.b, vector.width
    blocks = n // width
    if blocks:
        with e.loop(blocks, "c") as block:
            first = b.mul(block, I64(width))
            for group in range(rows // width):
                columns = [vector.load(panel, b.add(b.mul(b.add(first, I64(i)), I64(rows)), I64(group * width)))
                           for i in range(width)]
                for j, row in enumerate(vector.transpose(columns)):
                    at = b.add(b.mul(b.add(top, I64(group * width + j)), I64(n)), first)
                    vector.store(b.fadd(vector.load(target, at), row), target, at)
    if n % width:
        with e.loop(rows, "r") as r:
            with e.loop(n % width, "c", start=blocks * width) as c:
                at = b.gep(target, [b.add(b.mul(b.add(top, r), I64(n)), c)], inbounds=True)
                b.store(b.fadd(b.load(at), b.load(b.gep(panel, [b.add(b.mul(c, I64(rows)), r)]))), at)


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
