"""LLVM emitters, one per IR primitive, keyed by the names of `spadc.ir.primitives`.

Elementwise primitives are one scalar function each (`SCALAR`, spadc/backend/scalar.py), wrapped in
a loop over the result's entries; the others build their own loop nests. Every emitter computes what the primitive's NumPy
reference computes, with the same tie and NaN conventions (see spadc/ir/primitives.py), so that
compiled results match the interpreter to rounding.

Invariants:
- An emitter reads operands only through `e.load` and writes its result only through `e.store`.
- Integer division never executes with a zero or overflowing divisor: those are checked first
  (a run-time error) or replaced by a safe divisor whose result is discarded.
"""

from __future__ import annotations

from contextlib import contextmanager

import math

from llvmlite import ir

from .. import rng
from ..ir import primitives, reductions, structure
from . import gemm, routines
from .target import has_wide_multiply
from .scalar import SCALAR, fconst, is_float

I1, I8, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(64)


MAX_NAME = 64  # LLVM truncates longer local names (at 1024), which can make two of them clash


def llvm_name(hint: str | None) -> str:
    """An LLVM value name from a value's hint: short enough never to be truncated."""
    return (hint or "")[:MAX_NAME]


def _named(value, hint):
    """Name an LLVM instruction after the source variable it computes (`spadc llvm` reads better)."""
    if hint and isinstance(value, ir.Instruction) and not value.name:
        value.name = llvm_name(hint)
    return value


def _elementwise(e, op):
    # for j in 0..size: out[j] = f(a[j], b[j], ...), scalar operands read once per entry
    scalar = SCALAR[op.kind]
    out = op.result
    if out.type.rank == 0:
        operands = [e.load(a) for a in op.args]
        folded = _folded(e, op.kind, operands)
        if folded is not None:
            e.constants[out.id] = folded
        e.store(out, None, folded if folded is not None else _named(scalar(e, op, *operands), out.hint))
        return
    for j in e.each(out.type.size, "j"):
        values = [e.load(a, j if a.type.rank else None) for a in op.args]
        e.store(out, j, _named(scalar(e, op, *values), out.hint))


_FOLDED = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b}


def _folded(e, kind: str, operands):
    """`kind` of double constants as a constant (Python's float arithmetic is IEEE double's, rounded
    to nearest as LLVM's), or None. The adjoints of `pow` and others compute such scalars (`y - 1`)."""
    if kind not in _FOLDED or e.float != ir.DoubleType() or not all(
            isinstance(x, ir.Constant) and x.type == ir.DoubleType() and isinstance(x.constant, float) for x in operands):
        return None
    return ir.Constant(ir.DoubleType(), _FOLDED[kind](*(x.constant for x in operands)))


def fusable(op) -> bool:
    """An elementwise op on tensors (scalar operands read once): one of a group in one loop."""
    return op.kind in SCALAR and op.result.type.rank > 0 and all(
        a.type.size == op.result.type.size for a in op.args if a.type.rank)


def fused_groups(run):
    """A run's ops in the order they run, as groups: consecutive `fusable` ops of one size form one
    group (one loop over the entries, `elementwise_group`), any other op a group of its own."""
    k = 0
    while k < len(run):
        group = [run[k]]
        while (fusable(group[0]) and k + len(group) < len(run) and fusable(run[k + len(group)])
               and run[k + len(group)].result.type.size == group[0].result.type.size):
            group.append(run[k + len(group)])
        yield group
        k += len(group)


def elementwise_group(e, ops):
    """Consecutive `fusable` ops of one size in one loop over the entries: each entry of each
    result computed, stored, and handed to the group's later ops as a register. Safe where no
    storage alive during the group shares bytes with another unless they are one (the memory plan
    of a lane kernel keeps them apart: spadc/backend/memory.py `_span`): an op written in place over
    its operand reads each entry before writing it, as alone."""
    size = ops[0].result.type.size
    scalars = {a.id: e.load(a) for op in ops for a in op.args if not a.type.rank}
    for j in e.each(size, "j"):
        computed = {}
        for op in ops:
            values = [computed[a.id] if a.id in computed else scalars[a.id] if not a.type.rank else e.load(a, j)
                      for a in op.args]
            computed[op.result.id] = _named(SCALAR[op.kind](e, op, *values), op.result.hint)
            e.store(op.result, j, computed[op.result.id])


# ---- reductions ----------------------------------------------------------------------

_COMBINE = {r.name: r.combine for r in reductions.REDUCTIONS}


def _combine(e, op, acc, x):
    b = e.b
    combine, floating = _COMBINE[op.kind], is_float(op.args[0])
    if isinstance(combine, tuple):  # one instruction (on floats, on integers)
        return getattr(b, combine[0] if floating else combine[1])(acc, x)
    compare = combine
    if floating:  # NaN propagates: once the accumulator is NaN no comparison replaces it
        better = b.or_(b.fcmp_ordered(compare, x, acc), b.fcmp_unordered("!=", x, x))
    else:
        better = b.icmp_signed(compare, x, acc)
    return b.select(better, x, acc)


def _split(shape, axis):
    """(outer, n, inner) sizes around `axis` (the whole tensor for axis None)."""
    if axis is None:
        return 1, math.prod(shape), 1
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _reduce(e, op):
    # out[o, i] = x[o, 0, i]; for j in 1..n: out[o, i] = combine(out[o, i], x[o, j, i]) (vectorises over i)
    x, out = op.args[0], op.result
    outer, n, inner = _split(x.type.shape, op.attrs["axis"])
    b = e.b
    for o in e.each(outer, "o"):
        base = b.mul(o, I64(n * inner))
        row = b.mul(o, I64(inner))
        for i in e.each(inner, "i"):
            e.store(out, b.add(row, i), e.load(x, b.add(base, i)))
        for j in e.each(n - 1, "j", start=1):
            at = b.add(base, b.mul(j, I64(inner)))
            for i in e.each(inner, "i"):
                target = b.add(row, i)
                e.store(out, target, _combine(e, op, e.load(out, target), e.load(x, b.add(at, i))))


def _cumsum(e, op):
    # out[o, 0, i] = x[o, 0, i]; out[o, j, i] = out[o, j - 1, i] + x[o, j, i] (from the end with `reverse`)
    x, out = op.args[0], op.result
    outer, n, inner = _split(x.type.shape, op.attrs["axis"])
    b, reverse = e.b, op.attrs.get("reverse", False)
    add = b.fadd if is_float(x) else b.add
    for o in e.each(outer, "o"):
        base = b.mul(o, I64(n * inner))
        first = b.add(base, I64((n - 1) * inner if reverse else 0))
        for i in e.each(inner, "i"):
            e.store(out, b.add(first, i), e.load(x, b.add(first, i)))
        for j in e.each(n - 1, "j", start=1):
            position = b.sub(I64(n - 1), j) if reverse else j
            at = b.add(base, b.mul(position, I64(inner)))
            before = b.add(base, b.mul(b.add(position, I64(1 if reverse else -1)), I64(inner)))
            for i in e.each(inner, "i"):
                e.store(out, b.add(at, i), add(e.load(out, b.add(before, i)), e.load(x, b.add(at, i))))


def _argmax(e, op):
    # per line along the axis: best = x[0], at = 0; for j: take x[j] when it is larger, or NaN while
    # best is not (NumPy: the first NaN, else the first maximum)
    x, out = op.args[0], op.result
    outer, n, inner = _split(x.type.shape, op.attrs["axis"])
    b = e.b
    best, position = e.alloca(e.storage_type(x.type.dtype), name="best"), e.alloca(I64, name="argmax")
    floating = is_float(x)
    for o in e.each(outer, "o"):
        for i in e.each(inner, "i"):
            start = b.add(b.mul(o, I64(n * inner)), i)
            b.store(e.load(x, start), best)
            b.store(I64(0), position)
            for j in e.each(n - 1, "j", start=1):
                value, current = e.load(x, b.add(start, b.mul(j, I64(inner)))), b.load(best)
                if floating:
                    larger = b.or_(b.fcmp_ordered(">", value, current), b.fcmp_unordered("uno", value, value))
                    take = b.and_(larger, b.fcmp_ordered("ord", current, current))
                else:
                    take = b.icmp_signed(">", value, current)
                b.store(b.select(take, value, current), best)
                b.store(b.select(take, j, b.load(position)), position)
            e.store(out, b.add(b.mul(o, I64(inner)), i) if out.type.rank else None, b.load(position))


def _first_true(e, op):
    # per line along the axis: found = false; out[j] = x[j] and not found; found |= x[j]
    x, out = op.args[0], op.result
    outer, n, inner = _split(x.type.shape, op.attrs["axis"])
    b = e.b
    found = e.alloca(I1, name="found")
    for o in e.each(outer, "o"):
        for i in e.each(inner, "i"):
            b.store(I1(0), found)
            start = b.add(b.mul(o, I64(n * inner)), i)
            for j in e.each(n, "j"):
                at = b.add(start, b.mul(j, I64(inner)))
                value, seen = e.load(x, at), b.load(found)
                e.store(out, at, b.and_(value, b.xor(seen, I1(1))))
                b.store(b.or_(seen, value), found)


# ---- linear algebra and structure ---------------------------------------------------------

def _matmul(e, op):
    A, B, C = op.args[0], op.args[1], op.result
    if A.type.rank == 2 and B.type.rank == 2:
        routines.matmul(e, op)  # C[i, :] = 0; for k: C[i, :] += A[i, k] * B[k, :]
    elif A.type.rank == 2:
        routines.matvec(e, op)  # C[i] = A[i] . v
    elif B.type.rank == 2:
        routines.vecmat(e, op)  # C[:] = sum_k v[k] B[k, :]
    else:
        # A dot product in the products' fixed order (spadc/backend/gemm.py): the sum was once
        # left to LLVM to reassociate, and its bits then hung on the context the code landed in
        # (a sample's loss moved by an ulp with the kernel's lane count: the fuzzer's seed 1400123).
        (total,) = gemm.dot_tile(e, [e.pointer(A)], [e.pointer(B)], A.type.shape[0])[0]
        e.store(C, None, total)


def _outer(e, op):
    # out[i, j] = a[i] * b[j]  (the inner loop vectorises)
    a, b_vec, out = op.args[0], op.args[1], op.result
    m, n = out.type.shape
    for i in e.each(m, "i"):
        left = e.load(a, i)
        for j in e.each(n, "j"):
            e.store(out, e.b.add(e.b.mul(i, I64(n)), j), e.b.fmul(left, e.load(b_vec, j)))


def _strides(shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return list(reversed(strides))


def _transpose(e, op):
    # out[i] = x[i read back through the permutation]: result axis k is operand axis perm[k]
    x, out = op.args[0], op.result
    perm = structure.permutation(x.type.rank, op.attrs)
    source = _strides(x.type.shape)
    for index in e.indices(out.type.shape):
        e.store(out, e.linear(index, _strides(out.type.shape)), e.load(x, e.linear(index, [source[a] for a in perm])))


def _concat(e, op):
    out, axis, start = op.result, op.attrs["axis"], 0
    strides = _strides(out.type.shape)
    for part in op.args:
        for index in e.indices(part.type.shape):
            at = e.linear([e.b.add(i, I64(start)) if k == axis else i for k, i in enumerate(index)], strides)
            e.store(out, at, e.load(part, e.linear(index, _strides(part.type.shape))))
        start += part.type.shape[axis]


def _reshape(e, op):
    e.copy(op.args[0], op.result)


def _broadcast(e, op):
    # out[idx] = x[idx with stretched axes at 0]
    x, out = op.args[0], op.result
    shape, source = out.type.shape, x.type.shape
    aligned = (1,) * (len(shape) - len(source)) + source
    strides = [0 if d == 1 else s for d, s in zip(aligned, _strides(aligned))]
    if x.type.rank == 0:
        value = e.load(x)
        for j in e.each(out.type.size, "j"):
            e.store(out, j, value)
        return
    for index in e.indices(shape):
        e.store(out, e.linear(index, _strides(shape)), e.load(x, e.linear(index, strides)))


def _index_offsets(e, op, dynamic):
    """The loop shape over the indexed region, and a function from its indices to the flat offset."""
    x = op.args[0]
    strides = _strides(x.type.shape)
    base = I64(0)
    loops, loop_strides = [], []
    dynamic = iter(dynamic)
    for (kind, *rest), stride in zip(op.attrs["spec"], strides):
        if kind == "const":
            base = e.b.add(base, I64(rest[0] * stride))
        elif kind == "dyn":
            base = e.b.add(base, e.b.mul(next(dynamic), I64(stride)))
            if len(rest) == 2:  # a slice of constant length from this start
                loops.append(rest[1])
                loop_strides.append(stride)
        else:
            base = e.b.add(base, I64(rest[0] * stride))
            loops.append(rest[1] - rest[0])
            loop_strides.append(stride)
    return tuple(loops), (lambda index: e.b.add(base, e.linear(index, loop_strides)))


def _dynamic_indices(e, op, first: int):
    """Load the dynamic indices (operands from `first` on), checking those marked for it."""
    x = op.args[0]
    loaded = []
    values = iter(op.args[first:])
    for axis, ((kind, *rest), n) in enumerate(zip(op.attrs["spec"], x.type.shape)):
        if kind != "dyn":
            continue
        index = e.load(next(values))
        if rest[0]:
            length = rest[1] if len(rest) == 2 else None
            inside = e.b.icmp_unsigned("<", index, I64(n - (length or 1) + 1))  # unsigned: negatives are huge
            e.check(inside, structure.index_error(op.attrs.get("what", op.kind), axis, n, length), op.loc, index)
        loaded.append(index)
    return loaded


def _index(e, op):
    out = op.result
    shape, offset = _index_offsets(e, op, _dynamic_indices(e, op, 1))
    if out.id in e.plan.views:  # a contiguous run: a pointer into the operand (spadc/backend/memory.py)
        e.bind_view(out, op.args[0], offset([I64(0)] * len(shape)))
        return
    for index in e.indices(shape):
        e.store(out, e.linear(index, _strides(shape)), e.load(op.args[0], offset(index)))


def outer_add_at_layouts(e, op, lanes: bool):
    """(the region acc[...] of `outer_add_at`, a, b) as routine operands (routines.invoke), the
    result first made acc when it is not acc's storage."""
    acc, a, b, result = op.args[0], op.args[1], op.args[2], op.result
    e.copy(acc, result)
    _, offset = _index_offsets(e, op, _dynamic_indices(e, op, 3))
    region = e.b.gep(e.pointer(result), [offset([I64(0), I64(0)])], inbounds=True)
    operands = [e.lane_layout(v) if lanes else (e.pointer(v), I64(0)) for v in (a, b)]
    return [*operands, (region, I64(0))]


def _outer_add_at(e, op):
    routines.invoke(e, "outer_sum", op.args[1].type.shape + op.args[2].type.shape,
                    outer_add_at_layouts(e, op, lanes=False), 1)


def _index_add(e, op):
    # out = acc (in place when the planner shares their storage); out[region] += g
    acc, g, out = op.args[0], op.args[1], op.result
    e.copy(acc, out)
    shape, offset = _index_offsets(e, op, _dynamic_indices(e, op, 2))
    for index in e.indices(shape):
        at = offset(index)
        e.store(out, at, e.b.fadd(e.load(out, at), e.load(g, e.linear(index, _strides(shape)))))


def _index_set(e, op):
    # out = acc (in place when the planner shares their storage); out[region] = value
    acc, value, out = op.args[0], op.args[1], op.result
    e.copy(acc, out)
    shape, offset = _index_offsets(e, op, _dynamic_indices(e, op, 2))
    for index in e.indices(shape):
        e.store(out, offset(index), e.load(value, e.linear(index, _strides(shape))))


def _stack(e, op):
    out = op.result
    size = op.args[0].type.size
    for k, element in enumerate(op.args):
        e.copy(element, out, I64(k * size))


def _const(e, op):
    dtype = op.attrs["dtype"]
    value = op.attrs["value"]
    constant = fconst(e, value) if dtype == "f64" else I64(value) if dtype == "i64" else I1(int(value))
    e.store(op.result, None, constant)
    e.constants[op.result.id] = constant


def _eye(e, op):
    n = op.attrs["n"]
    for (i, j) in e.indices((n, n)):
        one = e.b.select(e.b.icmp_signed("==", i, j), fconst(e, 1.0), fconst(e, 0.0))
        e.store(op.result, e.linear([i, j], [n, 1]), one)


def _fail_if(e, op):
    flag = e.load(op.args[0])
    e.check(e.b.not_(flag), op.attrs["message"], op.loc, I64(0))
    e.store(op.result, None, flag)


def _onehot(e, op):
    n = op.attrs["n"]
    label = e.load(op.args[0])
    e.check(e.b.icmp_unsigned("<", label, I64(n)), f"label {{value}} is out of range for {n} classes", op.loc, label)
    for j in e.each(n, "j"):
        e.store(op.result, j, e.b.select(e.b.icmp_signed("==", j, label), fconst(e, 1.0), fconst(e, 0.0)))


# ---- randomness: spadc/rng.py (Philox4x64-10), emitted ------------------------------------------

def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


def _mulhilo(b, a, multiplier: int):
    """(high, low) words of a * multiplier: one 128-bit multiply on a 64-bit machine, else from
    32-bit halves as in rng.mulhilo (on a 32-bit target a 128-bit multiply is a library call)."""
    if has_wide_multiply():
        wide = ir.IntType(128)
        product = b.mul(b.zext(a, wide), ir.Constant(wide, multiplier))
        return b.trunc(b.lshr(product, ir.Constant(wide, 64)), I64), b.trunc(product, I64)
    low32 = I64(0xFFFFFFFF)
    m_lo, m_hi = I64(multiplier & 0xFFFFFFFF), I64(multiplier >> 32)
    a_lo, a_hi = b.and_(a, low32), b.lshr(a, I64(32))
    cross1, cross2 = b.mul(a_lo, m_hi), b.mul(a_hi, m_lo)
    middle = b.add(b.add(b.lshr(b.mul(a_lo, m_lo), I64(32)), b.and_(cross1, low32)), b.and_(cross2, low32))
    high = b.add(b.add(b.mul(a_hi, m_hi), b.lshr(cross1, I64(32))), b.add(b.lshr(cross2, I64(32)), b.lshr(middle, I64(32))))
    return high, b.mul(a, I64(_signed(multiplier)))


def _philox_rounds(b, counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(rng.ROUNDS):
        if round_:
            k0, k1 = b.add(k0, I64(_signed(rng.WEYL[0]))), b.add(k1, I64(_signed(rng.WEYL[1])))
        high0, low0 = _mulhilo(b, c0, rng.MULTIPLIERS[0])
        high1, low1 = _mulhilo(b, c2, rng.MULTIPLIERS[1])
        c0, c1, c2, c3 = b.xor(b.xor(high1, c1), k0), low1, b.xor(b.xor(high0, c3), k1), low0
    return c0, c1, c2, c3


PHILOX = "spadc.philox"
_WORDS = ir.LiteralStructType([I64] * 4)


def _philox(b, counter, key):
    """Philox4x64-10 of (counter, key): a call of the module's one copy of the rounds (inlining ten
    rounds at every random op made kernels with many of them slow to compile)."""
    module = b.module
    try:
        function = module.get_global(PHILOX)
    except KeyError:
        function = ir.Function(module, ir.FunctionType(_WORDS, [I64] * 6), name=PHILOX)
        function.linkage = "internal"
        inner = ir.IRBuilder(function.append_basic_block("entry"))
        words = _philox_rounds(inner, function.args[:4], function.args[4:])
        packed = ir.Constant(_WORDS, ir.Undefined)
        for k, word in enumerate(words):
            packed = inner.insert_value(packed, word, k)
        inner.ret(packed)
    result = b.call(function, [*counter, *key])
    return tuple(b.extract_value(result, k) for k in range(4))


def stream_key(e, site: int, sample=None) -> tuple:
    """The rng.Stream of this point: (seed, site, iteration, sample, step) as run-time words."""
    sample = e.sample if sample is None else sample
    return e.options["seed"], I64(_signed(site)), e.iteration, sample, e.options["step"]


@contextmanager
def uniform_loop(e, stream: tuple, count: int, name: str = "j"):
    """`for j in 0..count` with u_j, entry j of `stream` as a double in [0, 1): one Philox block
    gives four entries, kept in a 32-byte array and read by an inner loop over its lanes."""
    b = e.b
    seed, site, iteration, sample, step = stream
    lanes = e.alloca(I64, "philox.lanes", 4)
    blocks = (count + 3) // 4
    with e.loop(blocks, f"{name}.block") as block:  # (a context manager yields once: loops, never unrolled)
        out = _philox(b, (block, iteration, sample, step), (seed, site))
        for lane, word in enumerate(out):
            b.store(word, b.gep(lanes, [I64(lane)], inbounds=True))
        full = b.icmp_signed("<", block, I64(count // 4))
        with e.loop(b.select(full, I64(4), I64(count % 4)), f"{name}.lane") as lane:
            j = b.add(b.shl(block, I64(2)), lane, name=name)
            word = b.load(b.gep(lanes, [lane], inbounds=True))
            top = b.uitofp(b.lshr(word, I64(11)), ir.DoubleType())
            yield j, b.fmul(top, ir.Constant(ir.DoubleType(), 1.0 / (1 << 53)))


def _dropout_mask(e, op):
    out, p = op.result, op.attrs["p"]
    b = e.b
    size = max(out.type.size, 1)
    training = b.icmp_signed("!=", e.options["training"], I64(0))
    with b.if_else(training) as (then, otherwise):
        with then:
            stream = stream_key(e, rng.site_id(op.loc, op.inlined_at))
            with uniform_loop(e, stream, size) as (j, u):
                kept = b.fcmp_ordered(">=", u, ir.Constant(ir.DoubleType(), p))
                e.store(out, j if out.type.rank else None, b.select(kept, fconst(e, 1.0 / (1.0 - p)), fconst(e, 0.0)))
        with otherwise:
            for j in e.each(size, "j"):
                e.store(out, j if out.type.rank else None, fconst(e, 1.0))


BYTES_PER_WORD = ir.VectorType(I8, 64)  # a word's 64 bools, one byte each as stored
BITS_PER_WORD = ir.VectorType(I1, 64)


def _word_bytes(e, value, w):
    """The 64 bools of word w of `value` (whole words only) as one <64 x i8>."""
    at = e.b.gep(e.pointer(value), [e.b.mul(w, I64(64))], inbounds=True)
    return e.b.bitcast(at, BYTES_PER_WORD.as_pointer())


def _pack_bits(e, op):
    # words[w] = bit j % 64 set where x[64 w + j]: a whole word is one compare of 64 bytes (a mask
    # move on x86), the bits past the last whole word one by one
    x, out = op.args[0], op.result
    b = e.b
    whole, rest = divmod(x.type.size, 64)
    for w in e.each(whole, "w"):
        loaded = b.load(_word_bytes(e, x, w), align=1)
        e.store(out, w, b.bitcast(b.icmp_unsigned("!=", loaded, ir.Constant(BYTES_PER_WORD, None)), I64))
    if rest:
        e.store(out, I64(whole), I64(0))
        for j in e.each(rest, "j"):
            bit = b.shl(b.zext(e.load(x, b.add(j, I64(whole * 64))), I64), j)
            e.store(out, I64(whole), b.or_(e.load(out, I64(whole)), bit))


def _unpack_bits(e, op):
    # out[64 w + j] = bit j of words[w]
    words, out = op.args[0], op.result
    b = e.b
    whole, rest = divmod(out.type.size, 64)
    for w in e.each(whole, "w"):
        bits = b.bitcast(e.load(words, w), BITS_PER_WORD)
        b.store(b.zext(bits, BYTES_PER_WORD), _word_bytes(e, out, w), align=1)
    if rest:
        word = e.load(words, I64(whole))
        for j in e.each(rest, "j"):
            e.store(out, b.add(j, I64(whole * 64)), b.trunc(b.lshr(word, j), I1))


def _record(e, op):
    # words = values end to end (a float as the bits of a double: f32 widens exactly), then zeros
    out = op.result
    b = e.b
    offset = 0
    for value in op.args:
        for j in e.each(value.type.size, "j"):
            x = e.load(value, j if value.type.rank else None)
            if is_float(value):
                word = b.bitcast(x if e.float == ir.DoubleType() else b.fpext(x, ir.DoubleType()), I64)
            else:
                word = x if x.type == I64 else b.zext(x, I64)
            e.store(out, b.add(j, I64(offset)), word)
        offset += value.type.size
    for j in e.each(out.type.size - offset, "pad", start=offset):
        e.store(out, j, I64(0))


def _field(e, op):
    out, offset = op.result, op.attrs["offset"]
    b = e.b
    for j in e.each(out.type.size, "j"):
        word = e.load(op.args[0], b.add(j, I64(offset)))
        if out.type.dtype == "f64":
            x = b.bitcast(word, ir.DoubleType())
            value = x if e.float == ir.DoubleType() else b.fptrunc(x, e.float)
        else:
            value = word if out.type.dtype == "i64" else b.trunc(word, I1)
        e.store(out, j if out.type.rank else None, value)


EMITTERS = {name: _elementwise for name in SCALAR}
EMITTERS.update({
    **{r.name: _reduce for r in reductions.REDUCTIONS},
    "first_true": _first_true, "argmax": _argmax, "cumsum": _cumsum, "matmul": _matmul, "outer": _outer, "outer_add": routines.outer_sum, "outer_add_at": _outer_add_at, "transpose": _transpose, "reshape": _reshape,
    "broadcast": _broadcast, "index": _index, "index_add": _index_add, "index_set": _index_set, "stack": _stack, "concat": _concat, "const": _const,
    "eye": _eye, "onehot": _onehot, "fail_if": _fail_if, "dropout_mask": _dropout_mask, "pack_bits": _pack_bits,
    "unpack_bits": _unpack_bits, "record": _record, "field": _field,
})

from .gates import GATE_EMITTERS  # noqa: E402  (gates use this module's helpers)
from .linalg import EMITTERS as LINALG_EMITTERS  # noqa: E402
from .conv import EMITTERS as CONV_EMITTERS  # noqa: E402

EMITTERS.update(GATE_EMITTERS)
EMITTERS.update(LINALG_EMITTERS)
EMITTERS.update(CONV_EMITTERS)
assert set(EMITTERS) == set(primitives.PRIMITIVES), set(primitives.PRIMITIVES) ^ set(EMITTERS)
