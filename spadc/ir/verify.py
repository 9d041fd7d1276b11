"""The IR verifier: single assignment, definition before use, and every type by its rule.

A failure here is a compiler bug, never a user mistake (those are reported by the checker), so it
raises `IRVerifyError` naming the op and its source line. Tests run it after every pass.
"""

from __future__ import annotations

from . import primitives
from .core import REGION_OPS, Block, Op, Program
from .types import TensorType


class IRVerifyError(Exception):
    pass


def verify(program: Program):
    defined: set[int] = set()
    expected = [p.value for p in program.params] + [i.value for i in program.inputs]
    if [v.id for v in program.body.params] != [v.id for v in expected]:
        raise IRVerifyError("the body's parameters must be the params then the inputs, in order")
    visible = _block(program.body, set(), defined)
    for name, value in program.outputs.items():
        _require(value.id in visible, f"output {name} is not defined at the top level")
    _require(program.loss.id in visible, "the loss is not defined at the top level")
    _require(program.loss.type == TensorType("f64"), f"the loss must be a scalar f64, got {program.loss.type}")


def _require(condition: bool, message: str, op: Op | None = None):
    if not condition:
        where = f" (op {op.kind} at {op.loc})" if op is not None else ""
        raise IRVerifyError(message + where)


def _define(value, defined: set[int], visible: set[int], op=None):
    _require(value.id not in defined, f"value {value!r} is defined twice", op)
    defined.add(value.id)
    visible.add(value.id)


def _block(block: Block, outer: set[int], defined: set[int]) -> set[int]:
    visible = set(outer)
    for param in block.params:
        _define(param, defined, visible)
    for op in block.ops:
        for arg in op.args:
            _require(arg.id in visible, f"{arg!r} is used before its definition or outside its block", op)
        if op.kind in REGION_OPS:
            _region_op(op, visible, defined)
        else:
            _require(op.kind in primitives.PRIMITIVES, f"unknown primitive {op.kind}", op)
            _require(not op.regions, "a primitive has no regions", op)
            try:
                inferred = primitives.infer(op.kind, [a.type for a in op.args], op.attrs)
            except ValueError as error:
                raise IRVerifyError(f"{error} (op {op.kind} at {op.loc})") from None
            _require(len(op.results) == 1 and op.result.type == inferred,
                     f"result type {[str(r.type) for r in op.results]} but the rule gives {inferred}", op)
        for result in op.results:
            _define(result, defined, visible, op)
    for value in block.yields:
        _require(value.id in visible, f"yield of {value!r}, which is not visible", None)
    return visible


def _region_op(op: Op, visible: set[int], defined: set[int]):
    types = lambda values: [v.type for v in values]  # noqa: E731
    if op.kind == "cond":
        _require(len(op.args) == 1 and op.args[0].type == TensorType("bool"), "cond takes one scalar bool", op)
        _require(len(op.regions) == 2, "cond has two regions", op)
        for region in op.regions:
            _require(not region.params and types(region.yields) == types(op.results), "cond region types", op)
            _block(region, visible, defined)
        return
    _require(len(op.regions) == 1, f"{op.kind} has one region", op)
    (body,) = op.regions
    lo, hi = op.attrs["lo"], op.attrs["hi"]
    _require(isinstance(lo, int) and isinstance(hi, int), "loop bounds are ints", op)
    if "codes" in op.attrs:
        base, values = op.attrs["codes"]
        _require(op.kind == "loop" and lo == 0 and hi == len(values) and len(op.results) == len(op.args)
                 and not op.attrs.get("reverse") and base >= 1 and min(values, default=0) >= 0,
                 "a coded loop runs its codes in order, from 0, and keeps nothing stacked", op)
    _require(len(body.params) >= 1 and body.params[0].type == TensorType("i64"), "the first region param is the index", op)
    n = len(op.args) if op.kind == "loop" else 0
    _require(len(body.yields) == len(op.results), f"{op.kind} yields one value per result", op)
    if op.kind == "loop":
        carried = types(op.args)
        _require(types(body.params[1:]) == carried, "loop carried params match the initial values", op)
        _require(types(body.yields[:n]) == carried and types(op.results[:n]) == carried, "loop yields match carried", op)
    else:
        _require(not op.args and len(body.params) == 1, "tabulate has only its index", op)
    for value, result in zip(body.yields[n:], op.results[n:]):
        _require(hi > lo and result.type == value.type.with_shape((hi - lo,) + value.type.shape),
                 f"{op.kind}: a kept value of type {value.type} is stacked as {result.type}", op)
    _block(body, visible, defined)
