"""Tensor types: an element type and a static shape.

Invariants:
- `dtype` is one of `f64`, `i64`, `bool`. `f64` means "the program's float type"; the f32 compile
  option changes only how code generation stores it, never the IR.
- Every dimension is a positive Python int; scalars have shape ().
- `Fault` is the one exception a primitive's NumPy rule raises for a run-time error of the program
  (defined here, below every rule that raises it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DTYPES = ("f64", "i64", "bool")


class Fault(Exception):
    """A run-time error of the program being evaluated (not of the compiler)."""


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[int, ...] = ()

    def __post_init__(self):
        assert self.dtype in DTYPES, self.dtype
        assert all(isinstance(d, int) and d > 0 for d in self.shape), self.shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        if not self.shape:
            return self.dtype
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


F64 = TensorType("f64")
I64 = TensorType("i64")
BOOL = TensorType("bool")


def broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy broadcasting: align trailing dimensions; a 1 or a missing dimension stretches."""
    result = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        result.append(max(da, db))
    return tuple(reversed(result))
