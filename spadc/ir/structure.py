"""The structural primitives, one `OpRecord` each: products (matmul, outer), arrangement (transpose,
reshape, broadcast, concat, stack), indexing (index, index_set, index_add) and running sums.

All are linear in their float operands (the products in each), so their adjoints and tangents are
a line or two: a slice of `g` for concat and stack, the inverse permutation for transpose, the same
op on the tangent for every view. Their emitters are in spadc/backend/emitters.py.

Invariants:
- An `index` spec has one entry per axis: ("slice", lo, hi), ("const", i), ("dyn", checked) or
  ("dyn", checked, length), one i64 scalar operand per "dyn" entry in order. A dynamic entry whose
  `checked` is true is range-checked at run time (`index_key`, and the emitters with the same
  message, `index_error`); the adjoints' reads are never checked again (`unchecked`).
- The adjoint of `index` is a `Sparse` contribution: the driver (spadc/ad/reverse.py) adds it into
  the operand's adjoint in place rather than building a dense tensor of zeros.
- `index_set` and `index_add` return a new value (nothing aliased changes); the code generator
  writes them over `acc` when `acc` dies there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .record import OpRecord, add_all, or_zeros, require
from .types import F64, Fault


@dataclass(frozen=True)
class Sparse:
    """A contribution `g` to the entries of an operand picked by an `index` spec."""
    g: object
    spec: tuple
    indices: tuple


def permutation(rank: int, attrs: dict) -> tuple[int, ...]:
    """transpose's `perm` for an operand of `rank` (default: the axes reversed, as NumPy's)."""
    return tuple(attrs.get("perm") or range(rank)[::-1])


def index_error(what: str, axis: int, n: int, length: int | None = None) -> str:
    """The run-time message of a bad index (or dynamic slice start), with `{value}` for it
    (interpreter and compiled code)."""
    if what == "label":
        return f"label {{value}} is out of range for {n} classes"
    if length is not None:
        return (f"{what}: a slice of {length} from {{value}} is out of range for axis {axis} of length {n} "
                f"(its start must be in 0..{n - length})")
    return f"{what}: index {{value}} is out of range for axis {axis} of length {n}"


def index_key(spec, dynamic, shape, what: str) -> tuple:
    """The NumPy key of an `index` spec with its dynamic operands' values, range-checked (`Fault`)."""
    dynamic, key = iter(dynamic), []
    for axis, ((kind, *rest), n) in enumerate(zip(spec, shape)):
        if kind == "slice":
            key.append(slice(rest[0], rest[1]))
        elif kind == "const":
            key.append(rest[0])
        else:
            i, length = int(next(dynamic)), rest[1] if len(rest) == 2 else None
            if not 0 <= i <= n - (length or 1):
                raise Fault(index_error(what, axis, n, length).format(value=i))
            key.append(i if length is None else slice(i, i + length))
    return tuple(key)


def unchecked(spec) -> tuple:
    """An index spec whose dynamic entries the forward pass already checked: not checked again."""
    return tuple(("dyn", False, *rest[1:]) if kind == "dyn" else (kind, *rest) for kind, *rest in spec)


def linear_in_first(t, op, d):
    """The tangent of an op linear in its first operand: the same op (and attrs) on its tangent. The
    other operands (indices) have none."""
    return t.op(op.kind, d[0], *op.args[1:], **op.attrs) if d[0] is not None else None


def _bilinear_tangent(t, op, d):
    a, b = op.args
    return add_all(t, [t.op(op.kind, d[0], b) if d[0] is not None else None,
                       t.op(op.kind, a, d[1]) if d[1] is not None else None])


# ---- products ------------------------------------------------------------------------------

def _matmul_infer(types, attrs):
    a, b = types
    require(a.dtype == b.dtype == "f64" and 1 <= a.rank <= 2 and 1 <= b.rank <= 2, f"matmul of {a}, {b}")
    require(a.shape[-1] == b.shape[0], f"matmul inner dimensions of {a}, {b}")
    return F64.with_shape(a.shape[:-1] + b.shape[1:])


def _matmul_adjoint(c, op, g, wanted, P):
    a_rank, b_rank = op.args[0].type.rank, op.args[1].type.rank
    if a_rank == 2 and b_rank == 2:
        return [c.op("matmul", g, c.op("transpose", P.arg(1))) if wanted[0] else None,
                c.op("matmul", c.op("transpose", P.arg(0)), g) if wanted[1] else None]
    if a_rank == 2:  # matrix @ vector
        return [c.op("outer", g, P.arg(1)) if wanted[0] else None, c.op("matmul", g, P.arg(0)) if wanted[1] else None]
    if b_rank == 2:  # vector @ matrix
        return [c.op("matmul", P.arg(1), g) if wanted[0] else None, c.op("outer", P.arg(0), g) if wanted[1] else None]
    return [c.op("mul", g, P.arg(1)) if wanted[0] else None, c.op("mul", g, P.arg(0)) if wanted[1] else None]


def _outer_infer(types, attrs):
    a, b = types
    require(a.dtype == b.dtype == "f64" and a.rank == 1 and b.rank == 1, f"outer of {a}, {b}")
    return F64.with_shape(a.shape + b.shape)


def _outer_adjoint(c, op, g, wanted, P):
    return [c.op("matmul", g, P.arg(1)) if wanted[0] else None, c.op("matmul", P.arg(0), g) if wanted[1] else None]


def _outer_add_infer(types, attrs):
    acc, a, b = types
    require(acc == _outer_infer([a, b], attrs), f"outer_add of {a}, {b} into {acc}")
    return acc


def _outer_add_adjoint(c, op, g, wanted, P):
    return [g, c.op("matmul", g, P.arg(2)) if wanted[1] else None, c.op("matmul", P.arg(1), g) if wanted[2] else None]


def _outer_add_tangent(t, op, d):
    acc, a, b = op.args
    total = or_zeros(t, d[0], acc)
    if d[1] is not None:
        total = t.op("outer_add", total, d[1], b)
    if d[2] is not None:
        total = t.op("outer_add", total, a, d[2])
    return total


def contiguous(spec, shape) -> bool:
    """Whether x[spec] of an x of `shape` is one contiguous run of x (row-major): after its first
    slice, every axis is whole, and no slice starts at a dynamic place."""
    first_slice = next((axis for axis, (kind, *_) in enumerate(spec) if kind == "slice"), None)
    if first_slice is None or any(kind == "dyn" and len(rest) == 2 for kind, *rest in spec):
        return False
    return all(kind == "slice" and tuple(rest) == (0, n) for (kind, *rest), n in zip(spec[first_slice + 1:],
                                                                                       shape[first_slice + 1:]))


def _outer_add_at_infer(types, attrs):
    acc, a, b, *indices = types
    require(_index_infer([acc, *indices], attrs) == _outer_infer([a, b], attrs), f"outer_add_at of {a}, {b} into {acc}")
    return acc


def _outer_add_at(args, attrs):
    acc, a, b, *indices = args
    out = acc.copy()
    out[index_key(attrs["spec"], indices, acc.shape, "outer_add_at")] += np.outer(a, b)
    return out


def _outer_add_at_adjoint(c, op, g, wanted, P):
    indices = [P.arg(k) for k in range(3, len(op.args))]
    part = c.op("index", g, *indices, spec=unchecked(op.attrs["spec"]), what="outer_add_at") \
        if wanted[1] or wanted[2] else None
    return [g, c.op("matmul", part, P.arg(2)) if wanted[1] else None,
            c.op("matmul", P.arg(1), part) if wanted[2] else None] + [None] * len(indices)


def _outer_add_at_tangent(t, op, d):
    acc, a, b, *indices = op.args
    total = or_zeros(t, d[0], acc)
    if d[1] is not None:
        total = t.op("outer_add_at", total, d[1], b, *indices, **op.attrs)
    if d[2] is not None:
        total = t.op("outer_add_at", total, a, d[2], *indices, **op.attrs)
    return total


# ---- arrangement ---------------------------------------------------------------------------

def _cumsum_infer(types, attrs):
    (t,) = types
    require(t.dtype in ("f64", "i64") and 0 <= attrs["axis"] < t.rank, f"cumsum of {t} along {attrs['axis']}")
    return t


def _cumsum(args, attrs):
    x, axis = args[0], attrs["axis"]
    if attrs.get("reverse"):
        return np.flip(np.cumsum(np.flip(x, axis), axis=axis), axis).copy()
    return np.cumsum(x, axis=axis)


def _cumsum_adjoint(c, op, g, wanted, P):
    """Each entry feeds every later running sum: its adjoint is the sum of g from it to the end."""
    return [c.op("cumsum", g, axis=op.attrs["axis"], reverse=not op.attrs.get("reverse", False))]


def _transpose_infer(types, attrs):
    (t,) = types
    perm = permutation(t.rank, attrs)
    require(sorted(perm) == list(range(t.rank)) and t.rank >= 2, f"transpose of {t} by {perm}")
    return t.with_shape(tuple(t.shape[axis] for axis in perm))


def _transpose_adjoint(c, op, g, wanted, P):
    perm = permutation(op.args[0].type.rank, op.attrs)
    return [c.op("transpose", g, perm=tuple(perm.index(axis) for axis in range(len(perm))))]


def _reshape_infer(types, attrs):
    (t,) = types
    shape = tuple(attrs["shape"])
    require(t.with_shape(shape).size == t.size, f"reshape {t} to {shape}")
    return t.with_shape(shape)


def _broadcast_infer(types, attrs):
    (t,) = types
    shape = tuple(attrs["shape"])
    require(len(shape) >= t.rank and all(d in (1, s) for d, s in zip(t.shape[::-1], shape[::-1])),
            f"broadcast {t} to {shape}")
    return t.with_shape(shape)


def unbroadcast(c, g, shape):
    """Sum `g` over the axes that broadcasting stretched, back to `shape`."""
    while g.type.rank > len(shape):
        g = c.op("reduce_sum", g, axis=0)
    for axis in reversed(range(len(shape))):
        if shape[axis] == 1 and g.type.shape[axis] != 1:
            g = c.op("reduce_sum", g, axis=axis)
    return c.op("reshape", g, shape=shape) if g.type.shape != shape else g


def _concat_infer(types, attrs):
    axis, first = attrs["axis"], types[0]
    require(0 <= axis < first.rank and all(t.dtype == first.dtype and t.rank == first.rank and all(
        d == e for k, (d, e) in enumerate(zip(t.shape, first.shape)) if k != axis) for t in types), f"concat of {types}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return first.with_shape(tuple(shape))


def _concat_adjoint(c, op, g, wanted, P):
    """Each operand's adjoint is its slice of g along the axis."""
    axis, start, parts = op.attrs["axis"], 0, []
    for a, w in zip(op.args, wanted):
        n = a.type.shape[axis]
        spec = tuple(("slice", start, start + n) if k == axis else ("slice", 0, d) for k, d in enumerate(g.type.shape))
        parts.append(c.op("index", g, spec=spec, what="concat") if w else None)
        start += n
    return parts


def _each_or_zeros(t, op, d):
    """The same op over every operand's tangent (zeros for an operand without one)."""
    return t.op(op.kind, *[or_zeros(t, dk, a) for dk, a in zip(d, op.args)], **op.attrs)


def _stack_infer(types, attrs):
    require(len(types) >= 1 and len(set(types)) == 1, f"stack of {[str(t) for t in types]}")
    return types[0].with_shape((len(types),) + types[0].shape)


def _stack_adjoint(c, op, g, wanted, P):
    rest = tuple(("slice", 0, n) for n in op.result.type.shape[1:])
    return [c.op("index", g, spec=(("const", k),) + rest, what="stack") if w else None for k, w in enumerate(wanted)]


# ---- indexing ------------------------------------------------------------------------------

def _index_infer(types, attrs):
    t, *indices = types
    spec = attrs["spec"]
    require(len(spec) == t.rank, f"index spec {spec} for {t}")
    require(all(i.dtype == "i64" and i.rank == 0 for i in indices), "indices must be i64 scalars")
    require(sum(1 for s in spec if s[0] == "dyn") == len(indices), "one operand per dynamic index")
    shape = []
    for (kind, *rest), n in zip(spec, t.shape):
        if kind == "slice":
            lo, hi = rest
            require(0 <= lo < hi <= n, f"slice {lo}:{hi} of axis {n}")
            shape.append(hi - lo)
        elif kind == "const":
            require(0 <= rest[0] < n, f"index {rest[0]} of axis {n}")
        elif len(rest) == 2:  # a dynamic slice: ("dyn", checked, length)
            require(1 <= rest[1] <= n, f"a dynamic slice of {rest[1]} of axis {n}")
            shape.append(rest[1])
    return t.with_shape(shape)


def _index(args, attrs):
    x, *indices = args
    return np.array(x[index_key(attrs["spec"], indices, x.shape, attrs["what"])])


def _index_adjoint(c, op, g, wanted, P):
    indices = tuple(P.arg(k) for k in range(1, len(op.args)))
    return [Sparse(g, unchecked(op.attrs["spec"]), indices)] + [None] * len(indices)


def _index_update_infer(types, attrs):
    acc, g, *indices = types
    require(_index_infer([acc, *indices], attrs) == g, f"index update of {g} into {acc}")
    return acc


def _index_update(add: bool):
    def rule(args, attrs):
        acc, value, *indices = args
        key = index_key(attrs["spec"], indices, acc.shape, attrs.get("what", "index_add" if add else "index_set"))
        out = acc.copy()
        if add:
            out[key] += value
        else:
            out[key] = value
        return out
    return rule


def _index_add_adjoint(c, op, g, wanted, P):
    indices = [P.arg(k) for k in range(2, len(op.args))]
    return [g, c.op("index", g, *indices, spec=unchecked(op.attrs["spec"]), what="index_add")] + [None] * len(indices)


def _index_add_tangent(t, op, d):
    acc, g, *indices = op.args
    if d[1] is None:
        return d[0]
    return t.op("index_add", or_zeros(t, d[0], acc), d[1], *indices, **op.attrs)


def _index_set_adjoint(c, op, g, wanted, P):
    """The old entries that were replaced get no gradient; the value gets theirs."""
    indices = [P.arg(k) for k in range(2, len(op.args))]
    spec = unchecked(op.attrs["spec"])
    kept = c.op("index_set", g, c.zeros(op.args[1].type), *indices, spec=spec) if wanted[0] else None
    replaced = c.op("index", g, *indices, spec=spec, what="index_set") if wanted[1] else None
    return [kept, replaced] + [None] * len(indices)


def _index_set_tangent(t, op, d):
    acc, value, *indices = op.args
    return t.op("index_set", or_zeros(t, d[0], acc), or_zeros(t, d[1], value), *indices, **op.attrs)


STRUCTURE: tuple[OpRecord, ...] = (
    OpRecord("matmul", 2, _matmul_infer, lambda args, attrs: np.asarray(np.matmul(*args)), (0, 1),
             _matmul_adjoint, _bilinear_tangent,
             "A @ B for matrix-matrix, matrix-vector, vector-matrix and vector-vector (dot)", "structure"),
    OpRecord("outer", 2, _outer_infer, lambda args, attrs: np.outer(*args), (0, 1), _outer_adjoint, _bilinear_tangent,
             "outer(a, b)[i, j] = a[i] * b[j]: also the weight gradient of a matrix-vector product", "structure"),
    OpRecord("outer_add", 3, _outer_add_infer, lambda args, attrs: args[0] + np.outer(args[1], args[2]), (1, 2),
             _outer_add_adjoint, _outer_add_tangent,
             "acc + outer(a, b) in one pass, in place over acc when it dies here (made by the fusion pass)", "structure"),
    OpRecord("outer_add_at", None, _outer_add_at_infer, _outer_add_at, (1, 2, "indices"),
             _outer_add_at_adjoint, _outer_add_at_tangent,
             "acc with outer(a, b) added at acc[...] (the spec of `index`, one contiguous run), in one pass, in place "
             "over acc when it dies here: a stacked weight's gradient, `index_add(acc, outer(a, b), l)` fused by the "
             "fusion pass. attrs: spec", "structure"),
    OpRecord("cumsum", 1, _cumsum_infer, _cumsum, (), _cumsum_adjoint, linear_in_first,
             "running sums along `axis` (NumPy's cumsum); with `reverse`, from the end: the adjoint of cumsum. "
             "attrs: axis, reverse (optional)", "structure"),
    OpRecord("transpose", 1, _transpose_infer,
             lambda args, attrs: np.ascontiguousarray(np.transpose(args[0], permutation(args[0].ndim, attrs))), (),
             _transpose_adjoint, linear_in_first,
             "the axes permuted: result axis k is operand axis perm[k] (default: reversed); attrs: perm (optional)",
             "structure"),
    OpRecord("reshape", 1, _reshape_infer, lambda args, attrs: args[0].reshape(attrs["shape"]), (),
             lambda c, op, g, wanted, P: [c.op("reshape", g, shape=op.args[0].type.shape)], linear_in_first,
             "same elements in row-major order, another shape", "structure"),
    OpRecord("broadcast", 1, _broadcast_infer, lambda args, attrs: np.broadcast_to(args[0], attrs["shape"]).copy(), (),
             lambda c, op, g, wanted, P: [unbroadcast(c, g, op.args[0].type.shape)], linear_in_first,
             "NumPy broadcasting to a larger shape", "structure"),
    OpRecord("concat", None, _concat_infer, lambda args, attrs: np.concatenate(args, axis=attrs["axis"]), (),
             _concat_adjoint, _each_or_zeros,
             "the operands joined along `axis` (NumPy's concatenate); attrs: axis", "structure"),
    OpRecord("stack", None, _stack_infer, lambda args, attrs: np.stack(args), (), _stack_adjoint, _each_or_zeros,
             "[a, b, ...]: equal-typed elements along a new leading axis", "structure"),
    OpRecord("index", None, _index_infer, _index, ("indices",), _index_adjoint, linear_in_first,
             "x[...]: per axis a constant index, a constant slice, a dynamic i64 operand, or a slice of constant "
             "length from a dynamic start (range-checked at run time unless the checker proved it in range); attrs: "
             "spec (('slice', lo, hi), ('const', i), ('dyn', checked) or ('dyn', checked, length)), what", "structure"),
    OpRecord("index_set", None, _index_update_infer, _index_update(add=False), ("indices",),
             _index_set_adjoint, _index_set_tangent,
             "acc with acc[...] (the spec of `index`) replaced by a value: `x[i] = e`, a new value (nothing "
             "aliased changes), written in place over acc when acc dies here. attrs: spec, what (optional)", "structure"),
    OpRecord("index_add", None, _index_update_infer, _index_update(add=True), ("indices",),
             _index_add_adjoint, _index_add_tangent,
             "acc with g added at acc[...] (the spec of `index`): the adjoint of `index`, accumulated in place. "
             "attrs: spec", "structure"),
)
