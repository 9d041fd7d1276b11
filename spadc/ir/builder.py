"""Building IR: appends ops to the innermost open block, typing each result by its shape rule.

Invariants:
- Every op built here has its result type from `primitives.infer` (or the region rules of
  `core`), so built IR satisfies the verifier's type checks by construction.
- `inlined_at` is the chain of call sites currently being inlined; every op built records it.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..errors import Loc
from . import primitives
from .core import Block, Op, Value
from .types import TensorType


class Builder:
    def __init__(self, block: Block):
        self._blocks = [block]
        self.inlined_at: tuple[Loc, ...] = ()

    @property
    def block(self) -> Block:
        return self._blocks[-1]

    def emit(self, kind: str, args, loc: Loc, hint: str | None = None, **attrs) -> Value:
        return self.emit_typed(primitives.infer(kind, [a.type for a in args], attrs), kind, args, loc, hint, **attrs)

    def emit_typed(self, result_type, kind: str, args, loc: Loc, hint: str | None = None, **attrs) -> Value:
        """`emit` when the caller has already inferred the result's type."""
        result = Value(result_type, hint)
        self.block.ops.append(Op(kind, tuple(args), (result,), attrs, loc, self.inlined_at))
        return result

    def const(self, value, dtype: str, loc: Loc) -> Value:
        if dtype == "f64":
            value = float(value)
        elif dtype == "i64":
            value = int(value)
        else:
            value = bool(value)
        return self.emit("const", [], loc, value=value, dtype=dtype)

    @contextmanager
    def region(self, params: list[Value]):
        """Open a new block; ops emitted inside the `with` go to it."""
        block = Block(list(params))
        self._blocks.append(block)
        try:
            yield block
        finally:
            self._blocks.pop()

    @contextmanager
    def inlining(self, call_loc: Loc):
        saved = self.inlined_at
        self.inlined_at = saved + (call_loc,)
        try:
            yield
        finally:
            self.inlined_at = saved

    def region_op(self, kind: str, args, regions: tuple[Block, ...], result_types: list[TensorType],
                  loc: Loc, hints=None, **attrs) -> tuple[Value, ...]:
        hints = hints or [None] * len(result_types)
        results = tuple(Value(t, h) for t, h in zip(result_types, hints))
        self.block.ops.append(Op(kind, tuple(args), results, attrs, loc, self.inlined_at, regions))
        return results
