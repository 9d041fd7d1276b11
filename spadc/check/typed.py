"""What the checker knows about an elaborated expression, beyond its IR value.

Invariants:
- `const` is set exactly when the value is known at compile time (a NumPy scalar or array).
- `affine`, for i64 scalars, is an exact form `offset + sum(coeff * loop_var)` over loop variables
  whose ranges are known; `interval` is a sound inclusive bound on the value. Both are None when
  unknown (for example anything computed from an input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import Loc
from ..ir.core import Value


@dataclass(frozen=True)
class Affine:
    terms: tuple[tuple[int, int], ...]  # (loop variable id, coefficient), sorted, no zero coefficient
    offset: int

    @staticmethod
    def constant(c: int) -> "Affine":
        return Affine((), int(c))

    @staticmethod
    def variable(var_id: int) -> "Affine":
        return Affine(((var_id, 1),), 0)

    def plus(self, other: "Affine", sign: int = 1) -> "Affine":
        coeffs = dict(self.terms)
        for var, c in other.terms:
            coeffs[var] = coeffs.get(var, 0) + sign * c
        return Affine(tuple(sorted((v, c) for v, c in coeffs.items() if c)), self.offset + sign * other.offset)

    def scaled(self, k: int) -> "Affine":
        if k == 0:
            return Affine.constant(0)
        return Affine(tuple((v, c * k) for v, c in self.terms), self.offset * k)

    def bounds(self, ranges: dict[int, tuple[int, int]]) -> tuple[int, int]:
        """Exact min and max over the box of loop ranges (attained at a corner, which loops visit)."""
        lo = hi = self.offset
        for var, c in self.terms:
            a, b = ranges[var]
            lo += min(c * a, c * b)
            hi += max(c * a, c * b)
        return lo, hi


@dataclass(frozen=True)
class Typed:
    value: Value
    const: Any = None
    affine: Affine | None = None
    interval: tuple[int, int] | None = None

    @property
    def type(self):
        return self.value.type

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def const_scalar(self):
        return self.const.item() if isinstance(self.const, np.ndarray) else self.const


@dataclass
class Binding:
    kind: str  # 'const' | 'input' | 'param' | 'let' | 'output' | 'loopvar' | 'arg'
    typed: Typed
    loc: Loc

    @property
    def assignable(self) -> bool:
        return self.kind in ("let", "state")
