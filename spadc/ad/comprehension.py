"""The adjoint of a comprehension as a comprehension: elements in parallel, their sums outside.

A comprehension's elements are independent, and so are their adjoints, except where they add into
the same outer value. The plain form (reverse.py, `_tabulate_adjoint`) is a loop over the elements
carrying those outer adjoints, which keeps every element's adjoint in one sequential chain (a
stencil `u[(i + 1) % N]` adds into three entries of `u`'s adjoint per element, and no element can
start before the previous one is done). Here the adjoint is a `tabulate` yielding each element's
contributions, the outer adjoints are updated after it: scalars by a sum over the elements, index
contributions by slices where their indices are known at compile time to be runs (`u[i]`,
`u[(i + 1) % N]`: one or two runs), else by a loop that adds entry by entry. The element adjoints
then vectorise like the forward elements do.

Invariants:
- Used only when it costs no more memory than the plain form: every outer value with more than
  one entry is read in the element only by `index` ops at the element's top level (so its
  contributions are entries, kept sparse: spadc/ad/sparse.py), and the stacked entries of each
  such read are at most twice the value's size. Otherwise the plain form is used.
- Used only for reads of fewer than BLOCK entries (a stencil's neighbours). An element that reads
  a block of an outer value (a mixture component's matrix `Q[k]`) adds a block to its adjoint,
  which the plain loop adds in place (over a block of lanes, one outer-product sum into the
  slice) where the parallel form stacked it and added it after: the Gaussian mixture's gradient
  (D = 10, K = 25) took 17.0 ms so, 3.6 ms in the plain form.
- The result is the plain form's to rounding: the same contributions, summed in another order.
"""

from __future__ import annotations

import numpy as np

from ..ir import primitives
from ..ir.core import Block, Op, Value
from ..ir.types import TensorType
from .context import Adjoints, Context
from ..ir.structure import Sparse
from .sparse import SparseAdjoints, sparse_slots

MAX_RUNS = 4  # contiguous runs of indices added as slices; more: added entry by entry
STATIC_INDEX_LIMIT = 1 << 16  # elements whose indices are worked out at compile time
STACK_FACTOR = 2  # an outer value's stacked entries may take this many times its own size
BLOCK = 4  # entries of an outer value an element reads at once from which the plain form is used


def eligible(op: Op, captured: list[Value]) -> bool:
    """Whether the parallel form costs no more memory than the plain one (see the invariants)."""
    (body,) = op.regions
    n = op.attrs["hi"] - op.attrs["lo"]
    wide = {v.id: v for v in captured if v.type.size > 1}
    if any(y.id in wide for y in body.yields):
        return False
    for inner in body.ops:
        for position, arg in enumerate(inner.args):
            if arg.id in wide and (inner.kind != "index" or position != 0 or inner.result.type.size >= BLOCK
                                   or n * inner.result.type.size > STACK_FACTOR * arg.type.size):
                return False
        if inner.regions and _reads_any(inner, wide):
            return False
    return True


def _reads_any(op: Op, values: dict[int, Value]) -> bool:
    for region in op.regions:
        for inner in region.ops:
            if any(a.id in values for a in inner.args) or _reads_any(inner, values):
                return True
        if any(y.id in values for y in region.yields):
            return True
    return False


def parallel_adjoint(ctx: Context, op: Op, adjoints: Adjoints, captured: list[Value], g: Value, backward_block):
    """Emit the adjoint of the comprehension `op` (its result's adjoint `g`) in `ctx`, adding into
    `adjoints` of the outer values `captured`; returns the element adjoint's context."""
    (body,) = op.regions
    lo, hi = op.attrs["lo"], op.attrs["hi"]
    index = Value(body.params[0].type, body.params[0].hint)
    region = Block([index])
    inner = Context(region, ctx, (op, body), ctx.state, index)
    local = SparseAdjoints(inner, {v.id for v in captured})
    inner.at(op.loc, op.inlined_at)
    local.add(body.yields[0], inner.row(g))
    backward_block(inner, body, local)
    inner.at(op.loc, op.inlined_at)
    dense = [v for v in captured if local.is_dense(v)]
    slots = []  # (value, spec, entries in the element, indices in the element, their runs if known now)
    for value, spec, position, g_type in sparse_slots([v for v in captured if not local.is_dense(v)], [local]):
        entries, *indices = local.slot_yields(value, spec, position, g_type)
        slots.append((value, spec, entries, indices, _runs(spec, _static_rows(region, indices, lo, hi))))
    # Indices known now to make a few runs are not stacked: the adds below are slices.
    region.yields = [local.get(v) for v in dense] + [y for _, _, entries, indices, runs in slots
                                                     for y in [entries, *(indices if runs is None else [])]]
    if not region.yields:
        return inner
    results = tuple(Value(y.type.with_shape((hi - lo,) + y.type.shape), y.hint) for y in region.yields)
    ctx.block.ops.append(Op("tabulate", (), results, {"lo": lo, "hi": hi, "var": op.attrs["var"]}, op.loc,
                            op.inlined_at, (region,)))
    stacked = iter(results)
    for value in dense:
        adjoints.add(value, ctx.op("reduce_sum", next(stacked), axis=0))
    for value, spec, _, indices, runs in slots:
        entries = next(stacked)
        index_stacks = [next(stacked) for _ in indices] if runs is None else []
        _add_entries(ctx, adjoints, value, spec, entries, index_stacks, runs)
    return inner


def _add_entries(ctx: Context, adjoints: Adjoints, value: Value, spec, entries: Value, indices, runs):
    """Add each element's entries (stacked in `entries`) where its indices say: by `runs` when
    they are known, else entry by entry at the stacked `indices`."""
    if runs is not None:
        axis = next(k for k, (kind, *_) in enumerate(spec) if kind == "dyn")
        tail = tuple(("slice", 0, n) for n in entries.type.shape[1:])
        for first, last, start in runs:
            part = ctx.op("index", entries, spec=(("slice", first, last),) + tail, what="tape")
            run_spec = spec[:axis] + (("slice", start, start + last - first),) + spec[axis + 1:]
            adjoints.add(value, Sparse(part, run_spec, ()))
        return
    n = entries.type.shape[0]
    base = adjoints.get(value) or ctx.zeros(value.type)
    element, accumulator = Value(TensorType("i64", ())), Value(value.type)
    body = Context(Block([element, accumulator]), None, None, ctx.state)
    body.at(ctx.loc, ctx.inlined_at)
    row = (("dyn", False),)
    entry = body.op("index", entries, element, spec=row + tuple(("slice", 0, d) for d in entries.type.shape[1:]),
                    what="tape")
    at = [body.op("index", stack, element, spec=row, what="tape") for stack in indices]
    body.block.yields = [body.op("index_add", accumulator, entry, *at, spec=spec)]
    result = Value(value.type)
    ctx.block.ops.append(Op("loop", (base,), (result,), {"lo": 0, "hi": n, "var": "entry"}, ctx.loc, ctx.inlined_at,
                            (body.block,)))
    adjoints.set(value, result)


def _runs(spec, rows: list[np.ndarray] | None) -> list[tuple[int, int, int]] | None:
    """(first, last, start) runs of elements whose indices go up by one, when there are few of them
    and the spec has one point index, the first axis that the entries keep."""
    dyn = [k for k, (kind, *rest) in enumerate(spec) if kind == "dyn"]
    if rows is None or len(dyn) != 1 or len(spec[dyn[0]]) > 2 or any(kind != "const" for kind, *_ in spec[:dyn[0]]):
        return None
    (column,) = rows
    breaks = np.flatnonzero(np.diff(column) != 1) + 1
    if len(breaks) >= MAX_RUNS:
        return None
    edges = [0, *breaks.tolist(), len(column)]
    return [(first, last, int(column[first])) for first, last in zip(edges, edges[1:])]


def _static_rows(region: Block, values, lo: int, hi: int) -> list[np.ndarray] | None:
    """Each of `values` (computed in `region` from its index and constants alone) for every element,
    worked out now; None when one depends on anything else or there are too many elements."""
    if hi - lo > STATIC_INDEX_LIMIT:
        return None
    producers = {r.id: op for op in region.ops for r in op.results}
    needed: list[Op] = []

    def collect(value: Value) -> bool:
        if value is region.params[0]:
            return True
        op = producers.get(value.id)
        if op is None or op.regions or primitives.PRIMITIVES[op.kind].family in ("random", "effect"):
            return False
        if not all(collect(a) for a in op.args):
            return False
        if op not in needed:
            needed.append(op)
        return True

    if not all(collect(v) for v in values):
        return None
    order = {id(op): k for k, op in enumerate(region.ops)}
    needed.sort(key=lambda op: order[id(op)])
    rows = [np.empty(hi - lo, dtype=np.int64) for _ in values]
    for element in range(lo, hi):
        env = {region.params[0].id: np.int64(element)}
        for op in needed:
            try:
                env[op.result.id] = primitives.PRIMITIVES[op.kind].evaluate([env[a.id] for a in op.args], op.attrs, None)
            except primitives.Fault:
                return None
        for row, value in zip(rows, values):
            row[element - lo] = env[value.id]
    return rows
