"""Loop checkpointing as a program rewrite: a long loop cut into nested segments (ESTIMATORS.md section 9).

`cut(program, plan)` rewrites each loop the plan names (a top-level `for` or `while`, by its
position among the top-level loops) as nested loops: with segment counts (N1, ..., Nr) and
T = N1 * ... * Nr * L trips, r loops of N1, ..., Nr iterations marked `remat`, around a loop of L
steps that runs the original body. Reverse mode (spadc/ad/reverse.py) keeps only a `remat` loop's
carried values at the start of each iteration (its snapshots) and replays the iteration in the
adjoint to rebuild the tape of the level below: the innermost L steps are taped as before, once
per segment, and each remat level adds one replay of every step. So the peak holds
N1 + ... + Nr snapshots and one segment's tape, where the taped loop held T steps' tape.

Each level is a uniform split (every segment of a level has the same length, a divisor of the
trip count), which keeps every loop's trip count static. A `Binomial` plan cuts one level of
segments and marks it `binomial`: its adjoint keeps only a few snapshots and runs a binomial
schedule over the segments (spadc/ad/binomial.py), which reverses more segments than nested
uniform levels with the same snapshots and replays.

Invariants:
- The cut program computes what the original computes, bit for bit: the same ops in the same order.
- Every op of the original body appears once in the cut program, unchanged (same object), so its
  site id and random stream stay those of the uncut program; the step index is rebuilt as the value
  the body already reads (t = lo + s1 * T1 + ... + u), and each level's `flat` attribute
  (spadc/ir/core.py, `flat_iteration`) gives every step the flat iteration, hence the key, it had.
- The ops the cut adds (index arithmetic, the loops) are placed at the loop's source but marked as
  inlined at it, so they never shift the ordinals that make the body's site ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ad.checkpoints import replays_for
from ..ir.core import Block, Op, Program, Value
from ..ir.types import TensorType

INDEX = TensorType("i64", ())


@dataclass(frozen=True)
class Binomial:
    """A loop cut into `segments` segments of taped steps, reversed by a binomial schedule holding
    `snapshots` states of the loop (spadc/ad/checkpoints.py)."""
    segments: int
    snapshots: int

    @property
    def counts(self) -> tuple[int, ...]:
        return (self.segments,)

    @property
    def replays(self) -> int:
        """Forward replays of a step beyond the first forward pass, the taped one included: the
        schedule's advances beyond its first sweep, and the taped replay."""
        return replays_for(self.segments, self.snapshots)


def top_level_loops(program: Program) -> list[Op]:
    """The loops a plan may name, in program order (a plan's keys index this list)."""
    return [op for op in program.body.ops if op.kind == "loop"]


def trips(op: Op) -> int:
    return max(op.attrs["hi"] - op.attrs["lo"], 0)


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def cut(program: Program, plan: dict[int, tuple[int, ...] | Binomial]) -> Program:
    """`program` with each planned loop cut into its segments. `plan`: loop position -> segment counts,
    outermost first, whose product divides the loop's trip count, or a `Binomial` plan."""
    if not plan:
        return program
    loops = top_level_loops(program)
    chosen = {id(loops[position]): counts for position, counts in plan.items() if counts}
    ops = [_cut_loop(op, chosen[id(op)]) if id(op) in chosen else op for op in program.body.ops]
    body = Block(list(program.body.params), ops, list(program.body.yields))
    return program.with_body(body, program.outputs, program.loss, program.classifier)


def _cut_loop(op: Op, plan: tuple[int, ...] | Binomial) -> Op:
    counts = plan.counts if isinstance(plan, Binomial) else plan
    total = trips(op)
    assert total > 0 and all(n >= 1 for n in counts) and total % math.prod(counts) == 0, (total, counts)
    (body,) = op.regions
    where = (op.loc, op.inlined_at + (op.loc,))
    var = op.attrs["var"]
    strides, remaining = [], total
    for n in counts:
        remaining //= n
        strides.append(remaining)  # steps in one segment of this level
    step_count = remaining

    def constant(ops: list[Op], value: int) -> Value:
        result = Value(INDEX)
        ops.append(Op("const", (), (result,), {"value": value, "dtype": "i64"}, *where))
        return result

    def level(depth: int, base: Value | None, carried_in: list[Value]) -> Op:
        """The loop of level `depth` (len(counts): the steps), reading its first step's index `base`."""
        is_steps = depth == len(counts)
        index = Value(INDEX, f"{var}.{'step' if is_steps else f'segment{depth}'}")
        params = list(body.params[1:]) if is_steps else [Value(p.type, p.hint) for p in body.params[1:]]
        ops: list[Op] = []
        if base is None:
            base = constant(ops, op.attrs["lo"])
        if is_steps:
            ops.append(Op("add", (base, index), (body.params[0],), {}, *where))  # the body's own index
            ops += body.ops
            yields = list(body.yields)
            attrs = {"lo": 0, "hi": step_count, "var": f"{var}.step", "flat": (1, 1, 0)}
        else:
            start = Value(INDEX)
            offset = Value(INDEX)
            ops.append(Op("mul", (index, constant(ops, strides[depth])), (offset,), {}, *where))
            ops.append(Op("add", (base, offset), (start,), {}, *where))
            inner = level(depth + 1, start, params)
            ops.append(inner)
            yields = list(inner.results)
            multiplier = total if depth == 0 else 1  # the outermost level replaces the loop's own step
            attrs = {"lo": 0, "hi": counts[depth], "var": f"{var}.segment{depth}", "remat": True,
                     "flat": (multiplier, strides[depth], 0)}
            if isinstance(plan, Binomial):
                attrs["binomial"] = plan.snapshots
        results = tuple(Value(p.type, p.hint) for p in body.params[1:])
        return Op("loop", tuple(carried_in), results, attrs, *where, (Block([index, *params], ops, yields),))

    outer = level(0, None, list(op.args))
    return Op("loop", outer.args, op.results, {**outer.attrs, "var": var}, op.loc, op.inlined_at, outer.regions)
