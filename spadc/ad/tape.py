"""Tape accounting: what the forward pass of a gradient program keeps for its adjoint, in bytes.

One rule serves the static report and the compiled counter, so that for draws with replacement the
two agree exactly (ESTIMATORS.md section 6):
- a forward `loop`'s kept values (its yields beyond the carried ones) count once per iteration,
  except those that are themselves stacks of an inner loop (counted there) or packs of a gate;
- a kept `gate_pack` counts what it stores when it runs: k values, or for a Bernoulli draw the kept
  count (statically, its expectation keep * d); in a `cond` branch its values go into the branch's
  record, which counts them instead;
- values the adjoint reads at the top level count once per sample, except loops' stacked values
  and packs (a loop's final carried values do count: the adjoint reads them where they are);
- a `cond`'s kept values are one record per branch in one shared result: the larger branch's.
Comprehensions' stacks are not counted where they are made: either the adjoint reads them at the
top level, or a loop keeps them (both counted above), or they only feed a gate (transient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.core import Block, Value
from .reverse import GradientProgram

VALUE_BYTES = {"f64": 8, "i64": 8, "bool": 1}


def value_bytes(value: Value, float_bytes: int = 8) -> int:
    return value.type.size * (float_bytes if value.type.dtype == "f64" else VALUE_BYTES[value.type.dtype])


def pack_bytes(attrs: dict, float_bytes: int = 8) -> float:
    """What one kept gate_pack stores: a float a value; for a Bernoulli draw, the expectation
    (the keep probabilities, uniform or water-filled, sum to keep * d)."""
    values = float_bytes * attrs.get("channels", 1)  # per entry kept
    if attrs["draw"] == "with_replacement":
        return values * attrs["k"]
    return values * attrs["keep"] * attrs["d"]


@dataclass
class TapePlan:
    top: list[Value] = field(default_factory=list)  # counted once per sample
    loop_bytes: dict[int, int] = field(default_factory=dict)  # id(loop op) -> bytes it keeps per iteration
    static_bytes: float = 0.0  # per sample
    site_bytes: dict[int, float] = field(default_factory=dict)  # site id -> what its kept packs take, per sample


def plan_tape(gradient: GradientProgram, float_bytes: int = 8) -> TapePlan:
    program = gradient.program
    producers = _producers(program.body)
    plan = TapePlan()

    def counted(value: Value) -> bool:
        kind = producers.get(value.id)
        return kind not in ("loop tape", "gate_pack")

    for value in gradient.tape:
        if counted(value):
            plan.top.append(value)
            plan.static_bytes += value_bytes(value, float_bytes)

    def visit(block: Block, multiplicity: int):
        for op in block.ops:
            trips = op.attrs["hi"] - op.attrs["lo"] if op.kind in ("loop", "tabulate") else 1
            if op.kind == "gate_pack" and op.attrs["kept"] and op.attrs.get("counted", True):
                kept = pack_bytes(op.attrs, float_bytes) * multiplicity
                plan.static_bytes += kept
                plan.site_bytes[op.attrs["site"]] = plan.site_bytes.get(op.attrs["site"], 0) + kept
            if op.kind == "loop" and not op.attrs.get("reverse"):
                (body,) = op.regions
                per_iteration = sum(value_bytes(value, float_bytes) for value in body.yields[len(op.args):]
                                    if counted(value))
                if per_iteration:
                    plan.loop_bytes[id(op)] = per_iteration
                    plan.static_bytes += per_iteration * max(trips, 0) * multiplicity
            for region in op.regions:
                visit(region, multiplicity * max(trips, 0))

    visit(program.body, 1)
    return plan


def _producers(block: Block) -> dict[int, str]:
    """value id -> the kind of the op that defines it (region ops included)."""
    kinds = {}

    def visit(b: Block):
        for op in b.ops:
            carried = len(op.args) if op.kind == "loop" and not op.attrs.get("reverse") else len(op.results)
            for position, result in enumerate(op.results):
                kinds[result.id] = op.kind if position < carried else "loop tape"
            for region in op.regions:
                visit(region)

    visit(block)
    return kinds

