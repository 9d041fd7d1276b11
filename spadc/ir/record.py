"""`OpRecord`: one primitive's rules side by side, all but its LLVM code.

A record holds the shape rule, the NumPy reference (the interpreter's rule and the tests' oracle),
the adjoint and the tangent (built in IR from other primitives, so that forward over reverse needs
nothing more), what the adjoint reads from the tape, its family and its line in the reference. The
stages read the records (spadc/ir/primitives.py, spadc/ad/rules.py, spadc/ad/tangents.py); the code
generator keeps the emitter of each name (spadc/backend/), as LLVM has no place in the IR.

Invariants: `infer(types, attrs)` returns the result type or raises `ValueError` (a compiler bug:
the checker reports user mistakes); `numpy(args, attrs)` raises `Fault` for the language's run-time
errors; `adjoint(c, op, g, wanted, P)` reads primal values only through `P` and only those `saves`
names (operand positions, "out", "indices"), and returns one contribution per operand (None for
none); `tangent(t, op, d)` returns the result's tangent, None for zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import TensorType


@dataclass(frozen=True)
class OpRecord:
    name: str
    arity: int | None  # None: any number of operands
    infer: Callable[[list[TensorType], dict], TensorType]
    numpy: Callable[[list[np.ndarray], dict], np.ndarray]
    saves: tuple
    adjoint: Callable  # (c, op, g, wanted, P) -> one contribution per operand
    tangent: Callable  # (t, op, d) -> the result's tangent or None
    doc: str
    family: str


def require(condition: bool, message: str):
    """A shape rule's check: its failure is a compiler bug, never a user's mistake."""
    if not condition:
        raise ValueError(message)


def add_all(b, terms):
    """The sum of the terms that are not None (None if none is)."""
    present = [term for term in terms if term is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = b.op("add", total, term)
    return total


def or_zeros(b, tangent, value):
    """A tangent, or zeros of the value's type where it has none."""
    return tangent if tangent is not None else b.zeros(value.type)
