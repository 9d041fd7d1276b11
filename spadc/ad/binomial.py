"""A checkpointed loop reversed by a binomial schedule (Revolve; ESTIMATORS.md section 9).

A `remat` loop with attr `binomial` = S (spadc/passes/checkpoint.py: M segments of a long loop,
each running L steps) is reversed by `schedule(M, S)` (spadc/ad/checkpoints.py) as compiled there:
its carried values (its *state*) live in S + 1 buffer rows, one per snapshot slot and one for the
state being advanced, and both passes are coded loops (spadc/ir/core.py) over the schedule's codes:
- `forward`: the forward pass runs the M segments untaped, writing state i into its row at
  iteration i (a slot for the states the schedule's first sweep keeps);
- `reversed_loop`: the adjoint runs the schedule's actions in order: an ADVANCE runs a segment
  untaped from one row into another; a REVERSE replays a segment with its tape from a row and runs
  its adjoint (the reversed iteration a uniform cut would run, spadc/ad/reverse.py).

Invariants:
- The segment a code names is also its flat row, so every step draws from the key it has in the
  uncut loop, in the forward pass, in an advance and in a replay alike: the gradient is the taped
  gradient's, bit for bit.
- The rows are the only state the adjoint carries beyond the adjoints: the workspace holds S + 1
  states and one segment's tape, never a state per segment.
- A row is written only after the action has read its own: a state goes into its row through
  `index_set` after the action's `cond`, whose results are values of their own.
- The action's `cond` is `uniform` (its condition comes from the code alone): a kernel of several
  lanes runs it once for all of them, so a replayed segment's adjoint adds to a param's gradient
  lane after lane, step by step, in the order the taped loop does (spadc/backend/memory.py).
"""

from __future__ import annotations

from ..ir.core import Block, Op, Value, copy_block
from ..ir.types import TensorType
from .builder import Builder
from .checkpoints import REVERSE, CompiledSchedule, compiled

INDEX = TensorType("i64", ())


def plan_of(op: Op) -> CompiledSchedule:
    return compiled(op.attrs["hi"] - op.attrs["lo"], op.attrs["binomial"])


def snapshot_rows(op: Op) -> list[Value]:
    """The values holding the rows of the state of binomial loop `op`, as the forward pass leaves them."""
    rows = plan_of(op).rows
    return [Value(p.type.with_shape((rows,) + p.type.shape), f"{p.hint or 'state'}.snapshots")
            for p in op.regions[0].params[1:]]


def forward(op: Op, kept: list[Value]) -> list[Op]:
    """The forward pass of binomial loop `op`: its body untaped (a copy: the adjoint's replay runs
    the original), yielding `kept`, the rows of its state, as more results."""
    (body,) = op.regions
    plan = plan_of(op)
    top = Builder(Block())
    top.at(op.loc, op.inlined_at)
    initial = [top.zeros(rows.type) for rows in kept]
    copy = copy_block(body)
    inner = Builder(Block())
    inner.at(op.loc, op.inlined_at)
    code = Value(INDEX, f"{op.attrs['var']}.code")
    _define(inner, copy.params[0], "floordiv", code, plan.rows)
    row = inner.op("mod", code, _int(inner, plan.rows))
    rows = [Value(r.type, r.hint) for r in kept]
    written = [inner.op("index_set", buffer, state, row, spec=_row_spec(state))
               for buffer, state in zip(rows, copy.params[1:])]
    block = Block([code, *copy.params[1:], *rows], inner.block.ops + copy.ops, list(copy.yields) + written)
    codes = (plan.rows, tuple(i * plan.rows + plan.forward[i] for i in range(len(plan.forward))))
    attrs = {key: op.attrs[key] for key in ("var", "flat") if key in op.attrs}
    loop = Op("loop", tuple(op.args) + tuple(initial), tuple(op.results) + tuple(kept),
              {**attrs, "lo": 0, "hi": len(plan.forward), "codes": codes}, op.loc, op.inlined_at, (block,))
    return top.block.ops + [loop]


def reversed_loop(ctx: Builder, op: Op, region: Block, replay: list[Op], kept: list[Value],
                  initial: list[Value]) -> list[Value]:
    """The adjoint of binomial loop `op`, appended to `ctx`: its final adjoints (as the reversed loop
    of `region` would give them). `region`: the reversed iteration of a uniform cut, params [index,
    *adjoints], whose ops read the state from the body's own params; `replay`: the ops rebuilding
    an iteration's tape from them; `kept`: the forward pass's rows; `initial`: the adjoints'
    initial values."""
    (body,) = op.regions
    plan = plan_of(op)
    state = body.params[1:]
    code = Value(INDEX, f"{op.attrs['var']}.action")
    rows = [Value(r.type, r.hint) for r in kept]
    adjoints = region.params[1:]
    step = Builder(Block())
    step.at(op.loc, op.inlined_at)
    _define(step, region.params[0], "floordiv", code, 2 * plan.rows * plan.rows)  # the segment: body's index
    rest = step.op("mod", code, _int(step, 2 * plan.rows * plan.rows))
    kind = step.op("floordiv", rest, _int(step, plan.rows * plan.rows))
    source = step.op("mod", step.op("floordiv", rest, _int(step, plan.rows)), _int(step, plan.rows))
    destination = step.op("mod", rest, _int(step, plan.rows))
    reversing = step.op("eq", kind, _int(step, REVERSE))

    replayed = Block([], _read_rows(op, rows, source, state) + replay + region.ops, list(state) + list(region.yields))
    inputs = [Value(p.type, p.hint) for p in state]
    advance = copy_block(Block([], body.ops, list(body.yields)), {p.id: v for p, v in zip(state, inputs)})
    advanced = Block([], _read_rows(op, rows, source, inputs) + advance.ops,
                     list(advance.yields[:len(state)]) + list(adjoints))
    results = [Value(v.type, v.hint) for v in replayed.yields]
    # Every sample takes the same branch (the module's docstring).
    step.block.ops.append(Op("cond", (reversing,), tuple(results), {"uniform": True}, op.loc, op.inlined_at,
                             (replayed, advanced)))
    written = [step.op("index_set", buffer, value, destination, spec=_row_spec(value))
               for buffer, value in zip(rows, results)]
    step.block.params = [code, *rows, *adjoints]
    step.block.yields = written + results[len(state):]

    final_rows = [Value(r.type, r.hint) for r in kept]
    final = [Value(v.type, v.hint) for v in adjoints]
    codes = tuple(((segment * 2 + kind) * plan.rows + source) * plan.rows + destination
                  for kind, segment, source, destination in plan.actions)
    attrs = {"lo": 0, "hi": len(codes), "var": op.attrs["var"], "codes": (2 * plan.rows * plan.rows, codes)}
    if "flat" in op.attrs:
        attrs["flat"] = op.attrs["flat"]
    ctx.block.ops.append(Op("loop", tuple(kept) + tuple(initial), tuple(final_rows) + tuple(final), attrs,
                            op.loc, op.inlined_at, (step.block,)))
    return final


def _read_rows(op: Op, rows: list[Value], source: Value, into: list[Value]) -> list[Op]:
    """Ops defining `into` (the state) as row `source` of `rows`."""
    return [Op("index", (buffer, source), (value,), {"spec": _row_spec(value), "what": "snapshot"}, op.loc,
               op.inlined_at) for buffer, value in zip(rows, into)]


def _row_spec(value: Value) -> tuple:
    return (("dyn", False),) + tuple(("slice", 0, n) for n in value.type.shape)


def _int(builder: Builder, value: int) -> Value:
    return builder.op("const", value=value, dtype="i64")


def _define(builder: Builder, result: Value, kind: str, code: Value, divisor: int):
    """Append `result = kind(code, divisor)`: an existing value (a body's index) defined here."""
    builder.block.ops.append(Op(kind, (code, _int(builder, divisor)), (result,), {}, builder.loc, builder.inlined_at))
