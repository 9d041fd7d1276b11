"""Dead-code elimination.

An op is kept when a result is used (by a kept op, a yield, an output or the loss) or when it can
fail at run time: a range-checked index, `onehot` of a label, integer division, `int()`, `fail_if`. Those
errors are part of the program's meaning, so they are not removed with an unused result.
"""

from __future__ import annotations

from ..ir.core import Block, Op, Program


def _can_fail(op: Op) -> bool:
    """Ops kept even when their results are unused: run-time checks and effects."""
    if op.kind == "score_add" or (op.kind == "gate_pack" and op.attrs.get("scores", -1) >= 0):
        return True
    if op.kind == "index":
        return any(kind == "dyn" and rest[0] for kind, *rest in op.attrs["spec"])
    if op.kind in ("floordiv", "mod"):
        return op.result.type.dtype == "i64"
    return op.kind in ("onehot", "to_int", "fail_if")


def eliminate_dead_code(program: Program) -> Program:
    live = {program.loss.id, *(v.id for v in program.outputs.values())}
    if program.classifier:
        live |= {v.id for v in program.classifier}
    body = _sweep(program.body, live)
    return program.with_body(body, program.outputs, program.loss, program.classifier)


def _sweep(block: Block, live: set[int]) -> Block:
    """Walk backwards: an op is live if it can fail or a later live op or yield uses it."""
    live |= {v.id for v in block.yields}
    kept: list[Op] = []
    for op in reversed(block.ops):
        regions = tuple(_sweep(region, set(live)) for region in op.regions)
        needed = any(r.id in live for r in op.results) or _can_fail(op) or any(map(_has_failure, regions))
        if not needed:
            continue
        kept.append(Op(op.kind, op.args, op.results, op.attrs, op.loc, op.inlined_at, regions))
        live |= {a.id for a in op.args}
        for region in regions:
            live |= _captured(region)
    return Block(list(block.params), list(reversed(kept)), list(block.yields))


def _has_failure(block: Block) -> bool:
    return any(_can_fail(op) or any(map(_has_failure, op.regions)) for op in block.ops)


def _captured(block: Block) -> set[int]:
    """Values a region uses from outside it (and from inside, harmlessly)."""
    used = {v.id for v in block.yields}
    for op in block.ops:
        used |= {a.id for a in op.args}
        for region in op.regions:
            used |= _captured(region)
    return used
