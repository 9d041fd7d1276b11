"""Matrix products over a block of lanes (matrix-matrix), and the one-sample products in the same
arithmetic.

A lane kernel (spadc/backend/codegen.py) runs `W @ x` for all its lanes as one product of W with
the matrix of their x's, `g @ W` likewise, and a weight gradient's running sum `outer_add(acc, g,
x)` as acc += G^T X over the lanes: each matrix entry is read once per block instead of once per
sample, and the loops are register tiles of explicit vectors (V entries of 32 bytes: 4 doubles
or 8 floats; 64 bytes for `x @ W` and the sums where the target has AVX-512, measured faster).
Over lanes, products of large matrices (PACK_MIN_ENTRIES), and W @ x of short rows (SHORT_ROWS),
first copy what the tiles would read at a stride into scratch the memory planner gives them
(`pack_bytes`): panels of W, the lanes' operands side by side.

Invariants:
- Each entry is computed in one fixed order whatever the tile it falls in, so a sample's results
  do not depend on its lane, on how many lanes ran beside it, or on the kernel's lane count: the
  one-sample products (spadc/backend/routines.py: `matvec`, `vecmat`, `outer_sum`, one lane) are the same code.
  - `W @ x` where W has fewer than PACK_MIN_ENTRIES entries and rows of SHORT_ROWS or more, a dot
    product `W[i] . x`: V partial sums (one vector) over the first K - K % V terms, added
    pairwise, then the last K % V terms in order; the order depends on W's shape alone, so it is
    the same at every lane count;
  - other `W @ x`, `x @ W` and the outer products' running sum: each entry summed in order (of
    k; of the samples).
  Every term is one fused multiply-add (`llvm.fma`) when the target has FMA (`has_fma`), else a
  multiply and an add: never left to the optimiser, which fuses a vectorised term and not the
  same term in scalar code.
- The products read their operands through the emitter's pointers and never past their shapes.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from llvmlite import ir

from .target import has_fma, has_wide_vectors

I32, I64 = ir.IntType(32), ir.IntType(64)
VECTOR_BYTES = 32


@dataclass(frozen=True)
class Tiles:
    """Register tiles, in vector accumulators: a dot tile of `dot_rows` rows of W by `dot_lanes`
    lanes; `x @ W` in panels of `panel_lanes` lanes by `panel_vectors` vectors of columns; the
    running sum of outer products in tiles of `sum_rows` rows by `sum_vectors` vectors."""
    dot_rows: int
    dot_lanes: int
    panel_lanes: int
    panel_vectors: int
    sum_rows: int
    sum_vectors: int


# 16 accumulators where the target has 32 vector registers (AVX-512: measured best there); 8 to
# 12 where it has 16 (AVX2), leaving room for the operands: with 16 they spilled, and on a Zen 3
# core the digits MLP's gradient took 1,068 us at batch 32 against 530 us with these (forward
# 378 -> 179 us; batch 256: 8,198 -> about 4,000 us). Searched over 20 shapes on that core.
WIDE_TILES = Tiles(dot_rows=4, dot_lanes=4, panel_lanes=4, panel_vectors=4, sum_rows=4, sum_vectors=4)
NARROW_TILES = Tiles(dot_rows=4, dot_lanes=2, panel_lanes=4, panel_vectors=3, sum_rows=4, sum_vectors=3)


# Lane products of matrices of at least this many entries copy what they read at a stride into
# scratch first (`pack_bytes`). W's rows (and the lanes' storages) lie a power of two apart in
# the common shapes, where they fall into a few cache sets: on a Zen 3 core x @ W ran at 2.7
# GFLOP/s at 1024 x 1024 and 10.3 at 1020 x 1020; packed, 42.7 (NumPy's DGEMM: 43.4). Below, a
# call's copy of W costs more than it saves: a recurrent 64 x 64 step over 16 lanes took 5%
# longer packed, and W @ x 16% (with its order of sums below).
PACK_MIN_ENTRIES = 128 * 128
# Rows shorter than this are not summed as dot products: a dot of W's row and x ends in a sum across
# a vector, which for a row of 10 cost more than its terms; W @ x then sums each entry in order of
# k as large matrices do, over lanes from a copy of W transposed (the Gaussian mixture of
# bench/gmm.py, 10 x 10 factors: its gradient 4-5% faster on one core of the Zen 4; the LSTM's,
# whose input weights have rows of 8, within 2%).
SHORT_ROWS = 16


def pack_bytes(product: str, dims: tuple, lanes: int, float_bytes: int) -> int:
    """Scratch bytes a lane product (routines.PRODUCTS) of shape `dims` over `lanes` lanes packs
    its operands into: 0 where it reads them in place."""
    small = dims[0] * dims[1] < PACK_MIN_ENTRIES and not (product == "matvec" and dims[1] < SHORT_ROWS)
    if lanes < 2 or small:
        return 0
    if product in ("matvec", "vecmat"):  # one panel of W's rows (transposed) or columns, all k
        return dims[1 if product == "matvec" else 0] * tiles().panel_vectors * _vector_bytes(wide=True)
    if product == "outer_sum":  # each lane's x in a block of columns, and its g in a tile of rows
        return lanes * (_sum_block(dims[1]) + _line(float_bytes) + _sum_height(dims[0])) * float_bytes
    return 0


def _vector_bytes(wide: bool) -> int:
    return 64 if wide and has_wide_vectors() else VECTOR_BYTES


def tiles() -> Tiles:
    return WIDE_TILES if has_wide_vectors() else NARROW_TILES


def width(e, wide: bool = False) -> int:
    """Entries per vector: 32 bytes, or (`wide`) the target's widest (64 bytes with AVX-512)."""
    return _vector_bytes(wide) // _float_bytes(e)


def _float_bytes(e) -> int:
    return 8 if e.float == ir.DoubleType() else 4


def _fma_intrinsic(module, type_):
    scalar = type_.element if isinstance(type_, ir.VectorType) else type_
    name = {"double": "f64", "float": "f32"}[str(scalar)]
    if isinstance(type_, ir.VectorType):
        name = f"v{type_.count}{name}"
    try:
        return module.get_global(f"llvm.fma.{name}")
    except KeyError:
        return ir.Function(module, ir.FunctionType(type_, [type_] * 3), name=f"llvm.fma.{name}")


def fused(e, acc, a, x):
    """acc + a * x: one rounding on a target with FMA, two on one without (never left to chance)."""
    if has_fma():
        return e.b.call(_fma_intrinsic(e.b.module, acc.type), [a, x, acc])
    return e.b.fadd(acc, e.b.fmul(a, x))


class Lanes:
    """Loads and stores of `width` entries (a vector, or one scalar) at an element pointer."""

    def __init__(self, e, width: int):
        self.e, self.b, self.width = e, e.b, width
        self.type = ir.VectorType(e.float, width) if width > 1 else e.float
        self.align = 8 if e.float == ir.DoubleType() else 4

    def zero(self):
        return ir.Constant(self.type, [0.0] * self.width if self.width > 1 else 0.0)

    def load(self, pointer, index):
        at = self.b.gep(pointer, [index], inbounds=True)
        if self.width == 1:
            return self.b.load(at)
        return self.b.load(self.b.bitcast(at, self.type.as_pointer()), align=self.align)

    def store(self, value, pointer, index):
        at = self.b.gep(pointer, [index], inbounds=True)
        if self.width == 1:
            self.b.store(value, at)
        else:
            self.b.store(value, self.b.bitcast(at, self.type.as_pointer()), align=self.align)

    def splat(self, scalar):
        if self.width == 1:
            return scalar
        undefined = ir.Constant(self.type, ir.Undefined)
        single = self.b.insert_element(undefined, scalar, I32(0))
        return self.b.shuffle_vector(single, undefined, ir.Constant(ir.VectorType(I32, self.width), [0] * self.width))

    def of(self, entries):
        """One vector of `width` scalars."""
        built = ir.Constant(self.type, ir.Undefined)
        for k, entry in enumerate(entries):
            built = self.b.insert_element(built, entry, I32(k))
        return built

    def totals(self, vectors):
        """[total(v) for v in vectors] as one vector, for as many vectors as a vector has entries:
        the same pairwise sums, of lanes brought side by side by shuffles."""
        # Each vector's lanes hold partial sums (owner, index); a level adds the pairs (2i, 2i+1)
        # of every owner, merging two vectors into one, until one holds every owner's total.
        level = [(v, [(owner, k) for k in range(self.width)]) for owner, v in enumerate(vectors)]
        while len(level) > 1:
            merged = []
            for (left, left_terms), (right, right_terms) in zip(level[0::2], level[1::2]):
                position = {term: k for k, term in enumerate(left_terms + right_terms)}
                owners = sorted({owner for owner, _ in left_terms + right_terms})
                pairs = [(owner, i) for owner in owners for i in range(sum(1 for o, _ in left_terms + right_terms
                                                                        if o == owner) // 2)]
                first = [position[(owner, 2 * i)] for owner, i in pairs]
                second = [position[(owner, 2 * i + 1)] for owner, i in pairs]
                mask = lambda picks: ir.Constant(ir.VectorType(I32, self.width), picks)  # noqa: E731
                total = self.b.fadd(self.b.shuffle_vector(left, right, mask(first)),
                                    self.b.shuffle_vector(left, right, mask(second)))
                merged.append((total, pairs))
            level = merged
        return level[0][0]

    def transpose(self, vectors):
        """As many vectors as a vector has entries, transposed: out[j][i] = vectors[i][j]. Each
        stage swaps one bit of the vector's index with the same bit of the entry's (two shuffles
        per pair of vectors), so log2(width) stages transpose."""
        out, w = list(vectors), self.width
        bit = 1
        while bit < w:
            mask = lambda picks: ir.Constant(ir.VectorType(I32, w), picks)  # noqa: E731
            for i in (i for i in range(w) if not i & bit):
                j = i | bit
                low = [l if not l & bit else w + (l ^ bit) for l in range(w)]
                high = [l ^ bit if not l & bit else w + l for l in range(w)]
                out[i], out[j] = (self.b.shuffle_vector(out[i], out[j], mask(low)),
                                  self.b.shuffle_vector(out[i], out[j], mask(high)))
            bit *= 2
        return out

    def total(self, vector):
        """The sum of a vector's entries, pairwise: ((v0 + v1) + (v2 + v3)) + ..."""
        terms = [self.b.extract_element(vector, I32(k)) for k in range(self.width)]
        while len(terms) > 1:
            terms = [self.b.fadd(terms[k], terms[k + 1]) for k in range(0, len(terms), 2)]
        return terms[0]


def _tiles(e, count: int, tile: int, body):
    """body(first, size) over 0..count in tiles of `tile`, then the rest one at a time (for a
    product that *adds* into its result, where no index may be done twice)."""
    b = e.b
    full, rest = divmod(count, tile)
    if full:
        with e.loop(full, "tile") as t:
            body(b.mul(t, I64(tile)), tile)
    if rest:
        with e.loop(rest, "one", start=full * tile) as k:
            body(k, 1)


def covering(e, count, tile: int, body):
    """body(indices) over tiles of `tile` indices covering 0..count, for a product that *writes*
    each index's result (so computing one twice is harmless): the last tile moves back to end at
    count, overlapping the one before; fewer than `tile` indices in all repeat the last. One tile
    shape, so one copy of its code. A static count below `tile` gets a tile of its own size."""
    b = e.b
    if isinstance(count, int):
        if count < tile:
            body([I64(k) for k in range(count)])
            return
        full, rest = divmod(count, tile)
        with e.loop(full, "tile") as t:
            first = b.mul(t, I64(tile))
            body([b.add(first, I64(k)) for k in range(tile)])
        if rest:
            body([I64(count - tile + k) for k in range(tile)])
        return
    last = b.sub(count, I64(1))
    back = b.select(b.icmp_signed(">", count, I64(tile)), b.sub(count, I64(tile)), I64(0))
    with e.loop(b.udiv(b.add(count, I64(tile - 1)), I64(tile)), "tile") as t:
        first = b.mul(t, I64(tile))
        first = b.select(b.icmp_signed("<", first, back), first, back)
        indices = []
        for k in range(tile):
            index = b.add(first, I64(k))
            indices.append(b.select(b.icmp_signed("<", index, last), index, last))
        body(indices)


def _at(e, pointer, index):
    return e.b.gep(pointer, [index], inbounds=True)


# ---- y = W @ x ----------------------------------------------------------------------------

def dot_tile(e, rows, columns, k_dim: int) -> dict:
    """{c: [rows[r] . columns[c] for each r]} over `k_dim` entries, rows and columns element
    pointers; with as many rows as a vector has entries, each column's dots as one vector."""
    b = e.b
    vector, scalar = Lanes(e, width(e)), Lanes(e, 1)
    full = k_dim // vector.width
    pairs = [(r, c) for r in range(len(rows)) for c in range(len(columns))]
    accumulators = {pair: e.alloca(vector.type, "dot") for pair in pairs}
    for accumulator in accumulators.values():
        b.store(vector.zero(), accumulator)
    if full:
        with e.loop(full, "k") as block:
            k = b.mul(block, I64(vector.width))
            w = [vector.load(row, k) for row in rows]
            x = [vector.load(column, k) for column in columns]
            for (r, c), accumulator in accumulators.items():
                b.store(fused(e, b.load(accumulator), w[r], x[c]), accumulator)
    results = {}
    rest = range(full * vector.width, k_dim)
    if len(rows) == vector.width:  # each column's dots as one vector, the rest of k added to it
        # The same terms in the same order as a row's `total` and then its rest one by one (so
        # the same bits), with a vector of the rows' entries at each k of the rest: one row at a
        # time, the horizontal totals and the rest's scalar terms were most of a dot product of
        # 10 entries (a Gaussian mixture's 10 x 10 W @ x over lanes).
        w_rest = {k: vector.of([scalar.load(row, I64(k)) for row in rows]) for k in rest}
        for c in range(len(columns)):
            totals = vector.totals([b.load(accumulators[(r, c)]) for r in range(len(rows))])
            for k in rest:
                totals = fused(e, totals, w_rest[k], vector.splat(scalar.load(columns[c], I64(k))))
            results[c] = totals
        return results
    for c in range(len(columns)):
        partials = [b.load(accumulators[(r, c)]) for r in range(len(rows))]
        totals = []
        for r, partial in enumerate(partials):
            total = vector.total(partial)
            for k in rest:
                total = fused(e, total, scalar.load(rows[r], I64(k)), scalar.load(columns[c], I64(k)))
            totals.append(total)
        results[c] = totals
    return results


def matvec_over(e, W, x, y, m: int, k_dim: int, count, at, scratch=None):
    """y(s) = W @ x(s) for s in 0..count (W: m x k_dim): dot products (`_dots_over`) if W has
    fewer than PACK_MIN_ENTRIES entries and rows of at least SHORT_ROWS, else `_ordered_matvec_over`."""
    if m * k_dim < PACK_MIN_ENTRIES and k_dim >= SHORT_ROWS:
        _dots_over(e, W, x, y, m, k_dim, count, at)
    else:
        _ordered_matvec_over(e, W, x, y, m, k_dim, count, at, scratch)


def _dots_over(e, W, x, y, m: int, k_dim: int, count, at):
    """y(s)[i] = W[i] . x(s) (`dot_tile`): tiles of W's rows by tiles of lanes, in place."""
    b = e.b
    matrix = at(W, I64(0))
    vector = Lanes(e, width(e))

    def row_tile(row_indices):
        rows = [_at(e, matrix, b.mul(i, I64(k_dim))) for i in row_indices]

        def lane_tile(lanes):
            results = dot_tile(e, rows, [at(x, s) for s in lanes], k_dim)
            for c, values in results.items():
                target = at(y, lanes[c])
                if isinstance(values, list):
                    for i, value in zip(row_indices, values):
                        b.store(value, _at(e, target, i))
                else:  # one vector of the tile's rows, which are consecutive
                    vector.store(values, target, row_indices[0])

        covering(e, count, tiles().dot_lanes, lane_tile)

    covering(e, m, tiles().dot_rows, row_tile)


# From PACK_MIN_ENTRIES on, W @ x sums each entry in order of k, so that lanes run x @ W's packed
# kernel: at 256 x 256 and 128 lanes 419 against 606 us for the dots on a Zen 3 core (1024 x 1024:
# 6.0 against 10.1 ms, NumPy's DGEMM 6.2). One sample transposes W's rows in registers instead,
# about as fast as the dots (the digits MLP's gradient at batch 1: 98-106 against 95-104 us).
def _ordered_matvec_over(e, W, x, y, m: int, k_dim: int, count, at, scratch):
    """y(s) = W @ x(s), each entry summed in order of k, as in x @ W. With `scratch`
    (`pack_bytes`) and at least PACK_MIN_LANES lanes, each panel of W's rows is copied into it
    transposed (k-major) and run by x @ W's panel kernel; else each lane reads W's rows a block of
    columns at a time, transposed in registers."""
    b = e.b
    matrix = at(W, I64(0))
    vector_width = width(e, wide=True)

    def packed(i0, lanes_of: Lanes, vectors: int):
        panel, step = b.bitcast(scratch, e.float.as_pointer()), vectors * lanes_of.width

        def store(k0, columns):
            for u, block in enumerate(columns):
                for j, column in enumerate(block):
                    lanes_of.store(column, panel, b.add(b.mul(b.add(k0, I64(j)), I64(step)), I64(u * lanes_of.width)))

        _columns_of_rows(e, lanes_of, matrix, k_dim, i0, vectors, store)
        covering(e, count, tiles().panel_lanes,
                 lambda lanes: _panel(e, x, y, at, k_dim, panel, step, I64(0), i0, [lanes_of] * vectors, lanes))

    def in_registers(i0, lanes_of: Lanes, vectors: int):
        with _lane_indices(e, count) as (s,):
            lane_x = at(x, s)
            accumulators = [e.alloca(lanes_of.type, "matvec") for _ in range(vectors)]
            for accumulator in accumulators:
                b.store(lanes_of.zero(), accumulator)

            def add(k0, columns):
                xs = [lanes_of.splat(b.load(_at(e, lane_x, b.add(k0, I64(j))))) for j in range(len(columns[0]))]
                for accumulator, block in zip(accumulators, columns):
                    for x_k, column in zip(xs, block):  # (each entry's terms in order of k)
                        b.store(fused(e, b.load(accumulator), x_k, column), accumulator)

            _columns_of_rows(e, lanes_of, matrix, k_dim, i0, vectors, add)
            for u, accumulator in enumerate(accumulators):
                lanes_of.store(b.load(accumulator), at(y, s), b.add(i0, I64(u * lanes_of.width)))

    _packing(e, count, scratch, lambda: _covering_columns(e, m, vector_width, packed, tiles().panel_vectors),
             lambda: _covering_columns(e, m, vector_width, in_registers, IN_REGISTER_VECTORS))


# Row vectors one lane's W @ x sums at a time, transposed in registers: on a Zen 3 core the digits
# MLP at batch 1 took 106 us with 2, 111 with 3, 124 with 6 (the registers spill).
IN_REGISTER_VECTORS = 2


def _columns_of_rows(e, lanes_of: Lanes, matrix, k_dim: int, i0, vectors: int, use):
    """use(k0, columns) over k0 in 0..k_dim in order, columns[u][j] = W[i0 + u * width + r, k0 + j]
    for r in 0..width (W: rows of k_dim): blocks of `width` columns, each square of rows read a
    vector at a time and transposed in registers, then the last k_dim % width columns one by one."""
    b, w = e.b, lanes_of.width
    rows = [[b.mul(b.add(i0, I64(u * w + r)), I64(k_dim)) for r in range(w)] for u in range(vectors)]
    with e.loop(k_dim // w, "k") as block:
        k0 = b.mul(block, I64(w))
        loaded = [[lanes_of.load(matrix, b.add(row, k0)) for row in square] for square in rows]
        use(k0, [lanes_of.transpose(square) if w > 1 else square for square in loaded])
    for k in range(k_dim - k_dim % w, k_dim):
        use(I64(k), [[lanes_of.of([b.load(_at(e, matrix, b.add(row, I64(k)))) for row in square])] for square in rows])


# ---- y = x @ W ----------------------------------------------------------------------------

def vecmat_over(e, x, W, y, k_dim: int, n: int, count, at, scratch=None):
    """y(s) = x(s) @ W for s in 0..count (W: k_dim x n), each entry summed in order of k. With
    `scratch` (`pack_bytes`) and at least PACK_MIN_LANES lanes, each panel of W's columns is first
    copied into it, row after row."""
    b = e.b
    matrix = at(W, I64(0))
    vector_width = width(e, wide=True)  # (64-byte vectors measured 12% faster here, and slower in the dot)

    def packed(j0, lanes_of: Lanes, vectors: int):
        # W's rows are n apart: at a power-of-two n they meet in few cache sets
        panel, step = b.bitcast(scratch, e.float.as_pointer()), vectors * lanes_of.width
        with e.loop(k_dim, "pack") as k:
            for u in range(vectors):
                entry = b.add(b.add(b.mul(k, I64(n)), j0), I64(u * lanes_of.width))
                lanes_of.store(lanes_of.load(matrix, entry), panel, b.add(b.mul(k, I64(step)), I64(u * lanes_of.width)))
        covering(e, count, tiles().panel_lanes,
                 lambda lanes: _panel(e, x, y, at, k_dim, panel, step, I64(0), j0, [lanes_of] * vectors, lanes))

    def in_place(lanes):  # (a tile of lanes over every panel: measured faster in place than panels first)
        _over_ragged_columns(e, n, vector_width, lambda j0, pieces: _panel(
            e, x, y, at, k_dim, matrix, n, j0, j0, pieces, lanes), tiles().panel_vectors)

    _packing(e, count, scratch, lambda: _covering_columns(e, n, vector_width, packed, tiles().panel_vectors),
             lambda: covering(e, count, tiles().panel_lanes, in_place))


def _panel(e, x, y, at, k_dim: int, source, row_stride: int, column, j0, pieces, lanes):
    """y(s)[j0 : j0 + the pieces' width] = x(s) @ (the panel whose entry (k, c) is at `source` +
    k * row_stride + column + c) for the lanes s in `lanes`: a register tile of `pieces` (Lanes
    side by side) by the lanes, each entry summed in order of k."""
    b = e.b
    targets = [at(y, s) for s in lanes]
    inputs = [at(x, s) for s in lanes]
    offsets = _offsets(pieces)
    accumulators = {(c, u): e.alloca(piece.type, "vecmat") for c in range(len(lanes)) for u, piece in enumerate(pieces)}
    for (_, u), accumulator in accumulators.items():
        b.store(pieces[u].zero(), accumulator)
    with e.loop(k_dim, "k") as k:
        row = b.add(b.mul(k, I64(row_stride)), column)
        w = [piece.load(source, b.add(row, I64(offset))) for piece, offset in zip(pieces, offsets)]
        xs = [b.load(_at(e, lane_x, k)) for lane_x in inputs]
        splats = {(c, piece.width): piece.splat(xs[c]) for c in range(len(lanes)) for piece in pieces}
        for (c, u), accumulator in accumulators.items():
            b.store(fused(e, b.load(accumulator), splats[(c, pieces[u].width)], w[u]), accumulator)
    for (c, u), accumulator in accumulators.items():
        pieces[u].store(b.load(accumulator), targets[c], b.add(j0, I64(offsets[u])))


# Packing copies all of W per call: below this many lanes it costs more than the cache misses
# it saves, and the product reads W in place.
PACK_MIN_LANES = 4


def _packing(e, count, scratch, packed, in_place):
    """packed() where there is scratch and at least PACK_MIN_LANES lanes (known now, or a branch on
    the count), else in_place()."""
    if scratch is None or isinstance(count, int):
        (packed if scratch is not None and count >= PACK_MIN_LANES else in_place)()
        return
    with e.b.if_else(e.b.icmp_signed(">=", count, I64(PACK_MIN_LANES))) as (then, otherwise):
        with then:
            packed()
        with otherwise:
            in_place()


def _covering_columns(e, n: int, vector_width: int, panel, vectors: int):
    """As `_over_columns`, for a product that writes its results: when n holds a full panel, one
    loop of full panels, the last moved back to end at n (one copy of the panel's code)."""
    step = vectors * vector_width
    if n <= step:
        _over_columns(e, n, vector_width, panel, vectors)
        return
    b = e.b
    with e.loop((n + step - 1) // step, "panel") as p:
        first = b.mul(p, I64(step))
        panel(b.select(b.icmp_signed("<", first, I64(n - step)), first, I64(n - step)), Lanes(e, vector_width), vectors)


def _over_columns(e, n: int, vector_width: int, panel, vectors: int):
    """panel(first column, lane type, vectors) over n columns: a loop of full panels of `vectors`
    vectors, then single vectors, then single columns."""
    step = vectors * vector_width
    full = n // step
    if full:
        with e.loop(full, "panel") as p:
            panel(e.b.mul(p, I64(step)), Lanes(e, vector_width), vectors)
    j = full * step
    while j + vector_width <= n:
        panel(I64(j), Lanes(e, vector_width), 1)
        j += vector_width
    while j < n:
        panel(I64(j), Lanes(e, 1), 1)
        j += 1


def ragged_panels(n: int, vector_width: int, vectors: int) -> tuple[int, list[list[int]]]:
    """How `_over_ragged_columns` covers n columns: (full panels of `vectors` vectors, the vector
    widths of each panel after them). The rest is the full vectors left, then vectors of halving
    widths (10 columns in 8-wide vectors: [[8, 2]]), in one panel if it has at most `vectors`
    vectors, else two: a sum over lanes then takes one pass over the lanes for the rest, where
    single columns took a pass each (a Gaussian mixture's 10 x 10 outer sums: three passes
    instead of one, each bound by the latency of its few accumulators)."""
    full, rest = divmod(n, vectors * vector_width)
    whole = [vector_width] * (rest // vector_width)
    halves = [w for w in (vector_width >> k for k in range(1, vector_width.bit_length())) if rest % vector_width & w]
    panels = [whole + halves] if len(whole) + len(halves) <= vectors else [whole, halves]
    return full, [widths for widths in panels if widths]


def _over_ragged_columns(e, n: int, vector_width: int, panel, vectors: int):
    """panel(first column, pieces) over n columns (`ragged_panels`), pieces a list of `Lanes`
    whose vectors lie side by side from the first column."""
    full, rest = ragged_panels(n, vector_width, vectors)
    step = vectors * vector_width
    if full:
        with e.loop(full, "panel") as p:
            panel(e.b.mul(p, I64(step)), [Lanes(e, vector_width)] * vectors)
    j = full * step
    for widths in rest:
        panel(I64(j), [Lanes(e, w) for w in widths])
        j += sum(widths)


def _offsets(pieces) -> list[int]:
    """Where each of `pieces` (Lanes side by side) starts, from the first."""
    return [sum(piece.width for piece in pieces[:u]) for u in range(len(pieces))]


# ---- C = A @ B, matrices of each sample ----------------------------------------------------

def matmul_over(e, A, B, C, m: int, k_dim: int, n: int, count, at):
    """C = A @ B for each of `count` lanes, each entry summed in order of k from zero, every term
    a multiply and an add rounded apart (as the interpreter does): row i of C accumulates A[i, k]
    times row k of B, an inner loop over C's columns that LLVM vectorises."""
    b = e.b
    lanes = [I64(0)] if count == 1 else None
    with (nullcontext(lanes) if lanes else _lane_indices(e, count)) as lanes:
        for s in lanes:
            a, x, c = at(A, s), at(B, s), at(C, s)
            for i in e.each(m, "i"):
                for j in e.each(n, "j"):
                    b.store(ir.Constant(e.float, 0.0), _at(e, c, b.add(b.mul(i, I64(n)), j)))
                for k in e.each(k_dim, "k"):
                    left = b.load(_at(e, a, b.add(b.mul(i, I64(k_dim)), k)))
                    for j in e.each(n, "j"):
                        entry = _at(e, c, b.add(b.mul(i, I64(n)), j))
                        term = b.fmul(left, b.load(_at(e, x, b.add(b.mul(k, I64(n)), j))))
                        b.store(b.fadd(b.load(entry), term), entry)


@contextmanager
def _lane_indices(e, count):
    with e.loop(count, "lane", over_lanes=True) as s:
        yield [s]


# ---- acc += sum over lanes of outer(g, x) ---------------------------------------------------

def outer_sum_over(e, g, x, out, m: int, n: int, count, at, scratch=None):
    """out[i, j] += g(s)[i] * x(s)[j] for s in 0..count, in order of s; out shared by the lanes.
    With `scratch` (`pack_bytes`): for each block of `_sum_block(n)` columns, the lanes' x in it are
    copied side by side, and for each tile of rows, the lanes' g in it."""
    b = e.b
    target = at(out, I64(0))
    vector_width = width(e, wide=True)  # (measured: 7% faster than 32 bytes)
    height = _sum_height(m)

    def row_tile(i0, lane_rows, g_first, c0, columns: int, height: int):
        """out[i0 : i0 + height, c0 : c0 + columns] += the lanes' terms (c0 None: 0), where
        lane_rows(s) = (p, q), lane s's g[i0 + r] at p[g_first + r] and its x[c0 + j] at q[j]."""
        def panel(j0, pieces):
            column = j0 if c0 is None else b.add(c0, j0)
            offsets = _offsets(pieces)
            starts = [(u, b.add(b.mul(b.add(i0, I64(r)), I64(n)), b.add(column, I64(offsets[u]))))
                      for r in range(height) for u in range(len(pieces))]
            accumulators = [e.alloca(pieces[u].type, "sum") for u, _ in starts]
            for accumulator, (u, start) in zip(accumulators, starts):
                b.store(pieces[u].load(target, start), accumulator)
            with e.loop(count, "s") as s:
                gs, xs = lane_rows(s)
                x_vectors = [piece.load(xs, b.add(j0, I64(offset))) for piece, offset in zip(pieces, offsets)]
                for r in range(height):
                    g_r = b.load(_at(e, gs, b.add(g_first, I64(r))))
                    scales = {piece.width: piece.splat(g_r) for piece in pieces}
                    for u, piece in enumerate(pieces):
                        accumulator = accumulators[r * len(pieces) + u]
                        b.store(fused(e, b.load(accumulator), scales[piece.width], x_vectors[u]), accumulator)
            for accumulator, (u, start) in zip(accumulators, starts):
                pieces[u].store(b.load(accumulator), target, start)

        _over_ragged_columns(e, columns, vector_width, panel, tiles().sum_vectors)

    if scratch is None:
        tall = _sum_height(m, n, vector_width)
        _tiles(e, m, tall, lambda i0, _: row_tile(i0, lambda s: (at(g, s), at(x, s)), i0, None, n, tall))
        return
    # Where the lanes' storages lie a power of two apart, reading a tile's rows or columns of all
    # lanes in place misses the caches (see PACK_MIN_ENTRIES).
    block = _sum_block(n)
    packed_x = b.bitcast(scratch, e.float.as_pointer())
    packed_g = _at(e, packed_x, b.mul(count, I64(block + _line(_float_bytes(e)))))

    def column_block(c0, columns: int):
        # Lanes a cache line more than the block apart: a power of two apart, the tile's reads of
        # all lanes' x would fall in a few cache sets again.
        stride = columns + _line(_float_bytes(e))
        with e.loop(count, "pack") as s:
            _copy(e, _at(e, at(x, s), c0), _at(e, packed_x, b.mul(s, I64(stride))), columns)

        def rows(i0, _):
            with e.loop(count, "pack") as s:
                _copy(e, _at(e, at(g, s), i0), _at(e, packed_g, b.mul(s, I64(height))), height)
            row_tile(i0, lambda s: (_at(e, packed_g, b.mul(s, I64(height))), _at(e, packed_x, b.mul(s, I64(stride)))),
                     I64(0), c0, columns, height)

        _tiles(e, m, height, rows)

    full, rest = divmod(n, block)
    with e.loop(full, "block") as c:
        column_block(b.mul(c, I64(block)), block)
    if rest:
        column_block(I64(full * block), rest)


# Columns of x an outer sum packs at a time: each block re-reads every lane's g (a tile of rows at
# a time), so at most SUM_BLOCKS blocks, of at least 64 columns (64 KB of 128 lanes' f64: scratch
# the workspace holds beside the tape; 256 made the digits MLP's workspace 30% larger) and at most
# 256 (in the L2 cache while every tile of rows reads them). At 4096 x 4096 on a Zen 3 core, blocks
# of 64 took 1.5x the time of blocks of 256, re-reading g 64 times; at 1024, 12 to 256 measured
# the same.
SUM_BLOCK_COLUMNS = (64, 256)
SUM_BLOCKS = 16


def _sum_block(n: int) -> int:
    """Columns per block of a packed outer sum: all n, or the largest divisor of n up to the
    target (one shape of block, so one copy of its code), or failing a divisor of at least a
    quarter of it, the target and a last block of the rest."""
    least, most = SUM_BLOCK_COLUMNS
    target = min(most, max(least, -(-n // SUM_BLOCKS)))
    if n <= target:
        return n
    divisor = max(d for d in range(1, target + 1) if n % d == 0)
    return divisor if divisor >= target // 4 else target


def _line(float_bytes: int) -> int:
    """Entries in a 64-byte cache line."""
    return 64 // float_bytes


def _sum_height(m: int, n: int | None = None, vector_width: int = 0) -> int:
    """The tallest tile of rows that divides m: one shape of tile, so one copy of its code (a sum
    may not cover its edge twice, as the products that only write do). With the columns `n` (read
    in place, `ragged_panels`), as tall as the tile's accumulators allow: narrow rows (10 columns:
    two vectors) take up to twice or four times the rows of a full panel."""
    accumulators = tiles().sum_rows * tiles().sum_vectors
    widest = tiles().sum_vectors
    if n is not None:
        full, rest = ragged_panels(n, vector_width, widest)
        widest = max([widest] * bool(full) + [len(widths) for widths in rest])
    return next(rows for rows in range(accumulators // widest, 0, -1) if m % rows == 0)


def _copy(e, source, destination, count: int):
    """destination[0:count] = source[0:count], element pointers."""
    with e.loop(count, "copy") as k:
        e.b.store(e.b.load(_at(e, source, k)), _at(e, destination, k))
