"""Activity analysis: which values depend differentiably on a set of seed values.

Both transforms ask it: reverse mode which values get adjoints (seeds: the params), forward mode
which values get tangents (seeds: the params, and in a Hessian product the gradient's running sums).

Invariants:
- A result is active when one of its operands is and it can carry a derivative: an f64 value, or
  the 8-byte words a `record` lays f64 values into (a cond's tape in a gradient program), an
  `index` row of such words (a record stacked over a loop's iterations), and a `field` of such words
  (the record of a cond nested in a cond's branch). Bools and integers computed
  from active values (a comparison, `argmax`, `to_int`) are never active.
- Loops are a fixpoint: a carried param is active when its initial value or its yield is. A loop's
  result is active when its yield is, or when the loop may run zero times and its initial value is
  (the result is then the initial value itself).
"""

from __future__ import annotations

from ..ir.core import REGION_OPS, Block

# Ops whose i64 result carries an active operand's f64 bits: a record, a row of a stacked record, and
# a field of a record holding a nested cond's record.
WORD_CARRIERS = ("record", "index", "field")


def may_skip(loop) -> bool:
    """Whether a loop may run zero times, so that its results may be its initial values."""
    return loop.attrs["hi"] <= loop.attrs["lo"]


def active_values(body: Block, seeds: set[int]) -> set[int]:
    """Ids of the values of `body` (and of its regions) that depend on the `seeds`."""
    active = set(seeds)
    changed = True

    def mark(value):
        nonlocal changed
        if value.id not in active:
            active.add(value.id)
            changed = True

    def visit(block: Block):
        for op in block.ops:
            if op.kind in REGION_OPS:
                (body, *_) = op.regions
                if op.kind == "loop":
                    for k in range(len(op.args)):
                        if op.args[k].id in active or body.yields[k].id in active:
                            mark(body.params[1 + k])
                for region in op.regions:
                    visit(region)
                if op.kind == "loop" and may_skip(op):
                    for k in range(len(op.args)):
                        if op.args[k].id in active:
                            mark(op.results[k])
                for region in op.regions:
                    for result, value in zip(op.results, region.yields):
                        if value.id in active:
                            mark(result)
            elif op.kind in WORD_CARRIERS and op.result.type.dtype == "i64":
                carried = op.args if op.kind == "record" else op.args[:1]
                if any(a.id in active for a in carried):
                    mark(op.result)
            elif op.result.type.dtype == "f64" and any(a.id in active for a in op.args):
                mark(op.result)

    while changed:
        changed = False
        visit(body)
    return active
