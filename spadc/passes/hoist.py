"""Sample-independent hoisting: what depends only on params and constants is computed once per
kernel call (per chunk of samples), not once per sample, and its adjoint is applied once.

`split(program)` cuts a model into
- a *prologue*: the ops whose operands are all params or values the prologue already computes, at
  the top level, and, by loop fission, the part of a top-level loop or comprehension body that
  depends only on its index and on such values (a comprehension of its own in the prologue, whose
  rows the loop then reads at its index: a mixture's per-component matrices);
- the *per-sample* program: the rest, reading each hoisted value as a param of its own (so every
  later stage treats it as one: shared by all lanes, never on the tape);
- the prologue's *vector-Jacobian product*: a program whose loss is sum_h <h, h_bar> over the hoisted
  values h, with inputs h_bar; its gradient maps the hoisted values' adjoints, summed over the
  samples, to the params' gradients.
A kernel runs the prologue, then the samples (summing each hoisted value's adjoint as it sums a
param's gradient), then the product's gradient once (spadc/backend/kernels.py).

Invariants:
- The per-sample program computes what `program` computes, to rounding: the same ops on the same
  operands, some of them once for all samples.
- Only deterministic ops are hoisted (no draw, no score), and only float values cross from the
  prologue to the samples; a constant, an integer or a bool value the samples need is computed
  again where it is needed (it is cheap, and keeps immediates immediate).
- A program without inputs, or with nothing worth hoisting, is not split (`split` returns None),
  and neither is one whose hoisted values would pass `HOIST_BYTES`: hoisting trades memory for time,
  and memory is what some users lack.
- Path-sampled gradients keep the unsplit program: their random paths are defined on the program
  as written (a hoisted value would stop being a residual on the tape).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import primitives
from ..ir.core import REGION_OPS, Block, InitSpec, InputDecl, Op, ParamDecl, Program, Value, reads, walk_ops

HOIST_BYTES = 1 << 20  # the most that the hoisted values may take (as f64)
HOISTED_PREFIX = "^"  # the names of hoisted values as params: never a user's name
_FREE = ("index", "reshape", "broadcast", "transpose", "const")  # views and immediates: nothing to save


@dataclass
class Split:
    prologue: Program  # params -> outputs: the hoisted values by name
    per_sample: Program  # params: the program's, then the hoisted values
    product: Program  # loss sum_h <h, h_bar>, inputs h_bar (named after h): its gradient is the prologue's adjoint
    hoisted: tuple[ParamDecl, ...]


def _pure(op: Op) -> bool:
    """Deterministic, with no effect: a primitive that draws nothing, or a region of such ops."""
    if op.kind in REGION_OPS:
        return all(_pure(inner) for region in op.regions for inner in region.ops)
    return primitives.PRIMITIVES[op.kind].family not in ("random", "effect")


def _recomputed(op: Op, wanted: set[int]) -> bool:
    """Ops the samples compute again rather than read from the prologue: views and immediates
    (copying them would cost what it saves), and ops of which the samples want an integer or a bool
    (a `while` loop's trip count and flag, read by its `fail_if`)."""
    return op.kind in _FREE or any(r.type.dtype != "f64" and r.id in wanted for r in op.results)


def _uses(ops: list[Op], yields: list[Value]) -> set[int]:
    used = {v.id for v in yields}
    for op in ops:
        used |= reads(op)
    return used


class _Cut:
    """Which ops of one block go to the prologue, which stay, which are needed on both sides."""

    def __init__(self, ops: list[Op], available: set[int]):
        self.hoisted, self.kept = [], []
        for op in ops:
            if _pure(op) and reads(op) <= available:
                self.hoisted.append(op)
                available.update(r.id for r in op.results)
            else:
                self.kept.append(op)

    def crossing(self, yields: list[Value]) -> tuple[list[Value], list[Op]]:
        """(the float values the kept ops read from hoisted ones, the hoisted ops they recompute)."""
        wanted, recomputed, crossing = _uses(self.kept, yields), [], []
        for op in reversed(self.hoisted):  # a recomputed op wants its own operands
            if not any(r.id in wanted for r in op.results):
                continue
            if _recomputed(op, wanted):
                recomputed.append(op)
                wanted |= reads(op)  # with what its regions capture: a loop body's hoisted operands
            else:
                crossing.extend(r for r in op.results if r.id in wanted)
        recomputed.reverse()
        crossing.reverse()
        return crossing, recomputed


def _copy(ops: list[Op], copies: dict[int, Value]) -> list[Op]:
    """The ops again, with values of their own (a value is defined once in a program), reading
    `copies[v]` for each value v copied so far."""
    copied = []
    for op in ops:
        regions = []
        for region in op.regions:
            params = [Value(p.type, p.hint) for p in region.params]
            copies.update({p.id: q for p, q in zip(region.params, params)})
            inner = _copy(region.ops, copies)
            regions.append(Block(params, inner, [copies.get(y.id, y) for y in region.yields]))
        results = tuple(Value(r.type, r.hint) for r in op.results)
        copied.append(Op(op.kind, tuple(copies.get(a.id, a) for a in op.args), results, op.attrs, op.loc,
                         op.inlined_at, tuple(regions)))
        copies.update({r.id: q for r, q in zip(op.results, results)})
    return copied


def _needed(ops: list[Op], value: Value) -> list[Op]:
    """The ops of `ops` that computing `value` needs, in order."""
    wanted, needed = {value.id}, []
    for op in reversed(ops):
        if any(r.id in wanted for r in op.results):
            needed.append(op)
            wanted |= reads(op)
    return needed[::-1]


def _fission(op: Op, available: set[int], prologue: list[Op]) -> Op:
    """Move what a loop or comprehension body computes from its index and hoisted values alone into
    a comprehension of the prologue; return the op that stays, reading its rows."""
    (body,) = op.regions
    index = body.params[0]
    if op.attrs["hi"] <= op.attrs["lo"] or "codes" in op.attrs:  # no trip; or its index is no row number
        return op
    cut = _Cut(body.ops, available | {index.id})
    crossing, recomputed = cut.crossing(body.yields)
    if not crossing or all(o.kind in _FREE for o in cut.hoisted):
        return op
    lo, hi = op.attrs["lo"], op.attrs["hi"]
    stacked = tuple(Value(v.type.with_shape((hi - lo,) + v.type.shape), v.hint) for v in crossing)
    for value, rows in zip(crossing, stacked):  # one comprehension each: only a first yield has an adjoint
        copies = {index.id: Value(index.type, index.hint)}
        body_ops = _copy(_needed(cut.hoisted, value), copies)
        prologue.append(Op("tabulate", (), (rows,), {"lo": lo, "hi": hi, "var": op.attrs.get("var", "i")}, op.loc,
                           op.inlined_at, (Block([copies[index.id]], body_ops, [copies[value.id]]),)))
    available.update(v.id for v in stacked)
    row, reads = index, []
    if lo:
        start = Value(index.type)
        row = Value(index.type)
        reads += [Op("const", (), (start,), {"value": lo, "dtype": "i64"}, op.loc, op.inlined_at),
                  Op("sub", (index, start), (row,), {}, op.loc, op.inlined_at)]
    for value, rows in zip(crossing, stacked):
        spec = (("dyn", False),) + tuple(("slice", 0, d) for d in value.type.shape)
        reads.append(Op("index", (rows, row), (value,), {"spec": spec, "what": "a hoisted row"}, op.loc, op.inlined_at))
    new_body = Block(list(body.params), reads + recomputed + cut.kept, list(body.yields))
    return Op(op.kind, op.args, op.results, op.attrs, op.loc, op.inlined_at, (new_body,))


def split(program: Program) -> Split | None:
    """The split of `program` (the module's docstring), or None when it would not pay."""
    if not program.inputs:
        return None
    available = {p.value.id for p in program.params}
    cut = _Cut(program.body.ops, available)
    prologue = list(cut.hoisted)
    kept = [_fission(op, available, prologue) if op.kind in ("loop", "tabulate") else op for op in cut.kept]
    read_after = [program.loss, *program.outputs.values(), *(program.classifier or ())]
    cut.kept = kept
    crossing, recomputed = cut.crossing(read_after)
    hoisted_ids = {r.id for op in prologue for r in op.results}
    crossing += [r for op in prologue if op.kind == "tabulate" for r in op.results if r.id in _uses(kept, [])
                 and r not in crossing]
    if not any(o.kind not in _FREE for o in walk_ops(Block([], prologue))) or not crossing:
        return None
    if sum(v.type.size for v in crossing) * 8 > HOIST_BYTES:
        return None
    assert all(v.id in hoisted_ids for v in crossing)
    loc = prologue[0].loc
    hoisted = tuple(ParamDecl(f"{HOISTED_PREFIX}{k}", v, InitSpec("value", (0.0,)), None, loc)
                    for k, v in enumerate(crossing))
    user_values = [p.value for p in program.params]
    inputs = [d.value for d in program.inputs]
    per_sample = replace(program, params=list(program.params) + list(hoisted),
                         body=Block(user_values + list(crossing) + inputs, recomputed + kept, []))
    nothing = Value(program.loss.type)  # a prologue has no loss of its own
    zero = Op("const", (), (nothing,), {"value": 0.0, "dtype": "f64"}, loc)
    prologue_program = Program(f"{program.name}.prologue", list(program.params), [],
                               Block(list(user_values), prologue + [zero], []), {d.name: d.value for d in hoisted},
                               nothing)
    return Split(prologue_program, per_sample, _product(prologue_program, hoisted, loc), hoisted)


def _product(prologue: Program, hoisted, loc) -> Program:
    """loss = sum over hoisted h of sum(h * h_bar), h_bar an input: its params' gradient is the
    prologue's vector-Jacobian product with the h_bars."""
    ops, total = list(prologue.body.ops), None
    adjoints = []
    for decl in hoisted:
        adjoint = Value(decl.value.type, f"{decl.name}.adjoint")
        adjoints.append(InputDecl(f"{decl.name}.adjoint", adjoint, loc))
        product = Value(decl.value.type)
        term = Value(decl.value.type.with_shape(()))
        ops.append(Op("mul", (decl.value, adjoint), (product,), {}, loc))
        ops.append(Op("reduce_sum", (product,), (term,), {"axis": None}, loc))
        if total is None:
            total = term
        else:
            summed = Value(term.type)
            ops.append(Op("add", (total, term), (summed,), {}, loc))
            total = summed
    body = Block(list(prologue.body.params) + [a.value for a in adjoints], ops, [])
    return Program(f"{prologue.name}.product", list(prologue.params), adjoints, body, {}, total)
