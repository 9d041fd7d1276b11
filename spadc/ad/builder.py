"""Appending typed ops to a block: what the transforms' rules call (`op`, `const`, `zeros`).

Invariant: every op made here is placed at `loc` (and `inlined_at`), the source of the op being
differentiated, so that run-time checks and site ids in derivative code point at the user's line.
"""

from __future__ import annotations

from ..ir import primitives
from ..ir.core import Block, Op, Value
from ..ir.types import TensorType


class Builder:
    def __init__(self, block: Block):
        self.block = block
        self.loc, self.inlined_at = None, ()

    def at(self, loc, inlined_at):
        self.loc, self.inlined_at = loc, inlined_at

    def op(self, kind: str, *args: Value, **attrs) -> Value:
        result = Value(primitives.infer(kind, [a.type for a in args], attrs))
        self.block.ops.append(Op(kind, tuple(args), (result,), attrs, self.loc, self.inlined_at))
        return result

    def const(self, value: float) -> Value:
        return self.op("const", value=float(value), dtype="f64")

    def zeros(self, type_: TensorType) -> Value:
        zero = self.op("const", value={"f64": 0.0, "i64": 0, "bool": False}[type_.dtype], dtype=type_.dtype)
        return self.op("broadcast", zero, shape=type_.shape) if type_.shape else zero
