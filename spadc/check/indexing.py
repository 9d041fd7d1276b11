"""Indexing and slicing: `v[i]`, `A[i, j]`, `A[i]`, `A[:, j]`, `v[a:b]`.

Invariants:
- Indices are i64 scalars; slice bounds are compile-time integers with 0 <= lo < hi <= n.
- No negative-index wraparound: `v[-1]` is out of range (a wrapped `x[i - 1]` at `i = 0` is a bug
  far more often than an intent). Write `v[N - 1]`.
- An index proved out of range is a compile error. An affine index of loop variables, evaluated
  unconditionally, takes its extreme values at corners of the loop box, which every loop visits,
  so its range is exact. An index proved in range needs no run-time check; any other index is
  checked at run time and a bad one is a `SpadcError` naming the source line.
"""

from __future__ import annotations

from ..errors import Loc, SpadcError
from ..syntax import ast


def index(chk, node: ast.Index):
    base = chk.expr(node.base)
    shape = base.type.shape
    if len(node.items) > len(shape):
        raise SpadcError(f"too many indices: {base.type} has rank {len(shape)}, got {len(node.items)}", node.loc)
    what = f"`{node.base.name}`" if isinstance(node.base, ast.Var) else "the indexed tensor"
    spec, dynamic = [], []
    for axis, item in enumerate(node.items):
        n = shape[axis]
        if isinstance(item, ast.Slice):
            lo = 0 if item.lo is None else chk.const_int(item.lo, "a slice bound")
            hi = n if item.hi is None else chk.const_int(item.hi, "a slice bound")
            if not 0 <= lo < hi <= n:
                raise SpadcError(f"slice {lo}:{hi} is out of range for axis {axis} of {what} (length {n})", item.loc)
            spec.append(("slice", lo, hi))
        else:
            entry = _index_entry(chk, chk.expr(item), n, axis, what, ast.start_loc(item))
            spec.append(entry[0])
            dynamic += entry[1]
    spec += [("slice", 0, n) for n in shape[len(node.items):]]
    return chk.prim("index", [base, *dynamic], node.loc, spec=tuple(spec), what=what)


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
