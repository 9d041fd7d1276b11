"""Indexing and slicing: `v[i]`, `A[i, j]`, `A[i]`, `A[:, j]`, `v[a:b]`.

Invariants:
- Indices are i64 scalars; slice bounds are compile-time integers with 0 <= lo < hi <= n, or (a
  dynamic slice) `s : s + L` with L known at compile time and the start s checked at run time to
  lie in 0..n-L (unless proved there).
- No negative-index wraparound: `v[-1]` is out of range (a wrapped `x[i - 1]` at `i = 0` is a bug
  far more often than an intent). Write `v[N - 1]`.
- An index proved out of range is a compile error. An affine index of loop variables, evaluated
  unconditionally, takes its extreme values at corners of the loop box, which every loop visits,
  so its range is exact. An index proved in range needs no run-time check; any other index is
  checked at run time and a bad one is a `SpadcError` naming the source line.
"""

from __future__ import annotations

from ..errors import Loc, SpadcError
from ..ir.types import TensorType
from ..syntax import ast


def index(chk, node: ast.Index):
    base = chk.expr(node.base)
    what = f"`{node.base.name}`" if isinstance(node.base, ast.Var) else "the indexed tensor"
    spec, dynamic = index_spec(chk, base, node.items, what, node.loc)
    return chk.prim("index", [base, *dynamic], node.loc, spec=spec, what=what)


def index_spec(chk, base, items, what: str, loc: Loc) -> tuple[tuple, list]:
    """The `index` spec of `base[items]` and its dynamic operands (indices, slice starts)."""
    shape = base.type.shape
    if len(items) > len(shape):
        raise SpadcError(f"too many indices: {base.type} has rank {len(shape)}, got {len(items)}", loc)
    spec, dynamic = [], []
    for axis, item in enumerate(items):
        n = shape[axis]
        if isinstance(item, ast.Slice) and _is_dynamic(chk, item):
            entry, start = _dynamic_slice(chk, item, n, axis, what)
            spec.append(entry)
            dynamic.append(start)
        elif isinstance(item, ast.Slice):
            lo = 0 if item.lo is None else chk.const_int(item.lo, "a slice bound")
            hi = n if item.hi is None else chk.const_int(item.hi, "a slice bound")
            if not 0 <= lo < hi <= n:
                raise SpadcError(f"slice {lo}:{hi} is out of range for axis {axis} of {what} (length {n})", item.loc)
            spec.append(("slice", lo, hi))
        else:
            entry = _index_entry(chk, chk.expr(item), n, axis, what, ast.start_loc(item))
            spec.append(entry[0])
            dynamic += entry[1]
    spec += [("slice", 0, n) for n in shape[len(items):]]
    return tuple(spec), dynamic


def index_value(chk, base, indices, nodes, what: str, loc: Loc):
    """Index the leading axes of an already elaborated `base` by elaborated i64 scalars."""
    spec, dynamic = [], []
    for axis, (typed, node) in enumerate(zip(indices, nodes)):
        entry = _index_entry(chk, typed, base.type.shape[axis], axis, what, ast.start_loc(node))
        spec.append(entry[0])
        dynamic += entry[1]
    spec += [("slice", 0, n) for n in base.type.shape[len(indices):]]
    return chk.prim("index", [base, *dynamic], loc, spec=tuple(spec), what=what)


def _index_entry(chk, typed, n: int, axis: int, what: str, loc: Loc):
    """The spec entry for one index, and the dynamic operand it needs (if any)."""
    if typed.type.dtype != "i64" or typed.type.rank != 0:
        raise SpadcError(f"an index must be an i64 scalar, got {typed.type}", loc)
    if typed.is_const:
        i = int(typed.const)
        if not 0 <= i < n:
            raise SpadcError(f"index {i} is out of range for axis {axis} of {what} (length {n})", loc)
        return ("const", i), []
    if typed.interval is not None:
        lo, hi = typed.interval
        exact = typed.affine is not None and chk.conditional_depth == 0
        if exact and (lo < 0 or hi >= n):
            bad = lo if lo < 0 else hi
            raise SpadcError(f"index reaches {bad}, out of range for axis {axis} of {what} (length {n})", loc)
        if 0 <= lo and hi < n:
            return ("dyn", False), [typed]
    return ("dyn", True), [typed]


# ---- dynamic slices: x[s : s + L], L known at compile time, s at run time (LANGUAGE.md section 10) ----

def _constant(chk, node) -> int | None:
    """The node's integer value when it is known at compile time, else None."""
    try:
        value = chk.const_value(node, "a slice bound")
    except SpadcError:
        return None
    return int(value) if value.dtype.kind in "iu" and value.ndim == 0 else None


def _is_dynamic(chk, item: ast.Slice) -> bool:
    return any(bound is not None and _constant(chk, bound) is None for bound in (item.lo, item.hi))


def _linear(chk, node) -> tuple[dict, int]:
    """`node` as sum(coefficient * unknown) + offset: the unknowns are the values names are bound to
    and the other expressions (by their structure)."""
    constant = _constant(chk, node)
    if constant is not None:
        return {}, constant
    if isinstance(node, ast.Var) and (binding := chk.lookup(node.name)) is not None:
        return {binding.typed.value.id: 1}, 0
    if isinstance(node, ast.Unary) and node.op in "+-":
        inner = _linear(chk, node.operand)
        sign = -1 if node.op == "-" else 1
        return {k: sign * c for k, c in inner[0].items()}, sign * inner[1]
    if isinstance(node, ast.Binary) and node.op in ("+", "-"):
        left, right = _linear(chk, node.lhs), _linear(chk, node.rhs)
        sign = 1 if node.op == "+" else -1
        terms = dict(left[0])
        for k, c in right[0].items():
            terms[k] = terms.get(k, 0) + sign * c
        return terms, left[1] + sign * right[1]
    if isinstance(node, ast.Binary) and node.op == "*":
        left, right = _linear(chk, node.lhs), _linear(chk, node.rhs)
        if not left[0] or not right[0]:
            scale, form = (left[1], right) if not left[0] else (right[1], left)
            return {k: scale * c for k, c in form[0].items()}, scale * form[1]
    # Any other expression (`k % 2`, `min(i, 3)`) is one unknown: equal where it is written the same
    # (index expressions are pure, and both bounds see the same bindings).
    return {_structure(chk, node): 1}, 0


def _structure(chk, node):
    """`node` without its source positions, names replaced by the values they are bound to."""
    if isinstance(node, ast.Var):
        binding = chk.lookup(node.name)
        return ("value", binding.typed.value.id) if binding is not None else ("name", node.name)
    if isinstance(node, tuple):
        return tuple(_structure(chk, item) for item in node)
    if not hasattr(node, "__dataclass_fields__"):
        return node
    return (type(node).__name__,) + tuple(_structure(chk, getattr(node, field)) for field in node.__dataclass_fields__
                                           if field not in ("loc", "name_loc"))


def _dynamic_slice(chk, item: ast.Slice, n: int, axis: int, what: str):
    """The spec entry ("dyn", checked, L) and the start of `x[lo : hi]` where hi - lo = L is known at
    compile time and lo is not."""
    if item.lo is None or item.hi is None:
        raise SpadcError("a slice with a start known only at run time needs both bounds, as in `x[s : s + 3]`",
                         item.loc)
    start = chk.expr(item.lo)
    if start.type != TensorType("i64"):
        raise SpadcError(f"the start of a slice must be an i64 scalar, got {start.type}", ast.start_loc(item.lo))
    lo, hi = _linear(chk, item.lo), _linear(chk, item.hi)
    if any(hi[0].get(k, 0) != lo[0].get(k, 0) for k in {*lo[0], *hi[0]}):
        raise SpadcError("the length of a slice must be known at compile time: write it as `x[s : s + L]` with "
                         "L a constant", item.loc)
    length = hi[1] - lo[1]
    if not 1 <= length <= n:
        raise SpadcError(f"a slice of {length} does not fit axis {axis} of {what} (length {n})", item.loc)
    proven = start.interval is not None and 0 <= start.interval[0] and start.interval[1] <= n - length
    return ("dyn", not proven, length), start
