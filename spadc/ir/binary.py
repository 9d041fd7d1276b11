"""The elementwise functions of two operands: one record per function, holding everything about it
(as spadc/ir/elementwise.py does for one operand).

A record gives, side by side: the NumPy reference (the interpreter's rule and the tests' oracle),
the dtypes it takes and gives, the LLVM lowering, each operand's partial derivative (from which both
the adjoint and the tangent rule are made), what the tape keeps for them, and its line in the
reference. The stages read these records (spadc/ir/primitives.py, spadc/ad/rules.py,
spadc/ad/tangents.py, spadc/backend/scalar.py).

Invariants:
- `partials[k](b, x, y, out)` gives operand k's partial derivative as a sign and a product of
  factors, each ("mul", v) or ("div", v): the chain rule is sign * (((g op1 v1) op2 v2) ...), every
  step guarded to exactly 0 where its left side is 0 (spadc/ad/rules.py, `times`), so that the side
  of a `where` that was not taken never turns an infinite partial into NaN. No factor: g itself (an
  add or a subtraction costs no multiply). A division is one rounding, as `g / b` for `a / b`.
- `reads[k]` names what operand k's partial reads (operand positions, "out"): what the tape keeps
  for it, when that operand has an adjoint (`rate * u` keeps `u` only for `rate`'s gradient).
- `lowering`: ("fadd", "add") for one LLVM instruction on floats and on integers, "llvm.pow" or
  "atan2" for an intrinsic or a C math function of the program's float type, None for an emitter
  of the same name in spadc/backend/scalar.py (functions with branches: floor division, max).
- `partials` None: a zero derivative when `zero_derivative` (or operands that are not numbers), else
  a rule of its own in spadc/ad/rules.py and spadc/ad/tangents.py (max and min keep only which side
  won on the tape: one byte, not eight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .types import Fault


@dataclass(frozen=True)
class Binary:
    name: str
    numpy: Callable[[np.ndarray, np.ndarray], np.ndarray]
    doc: str
    lowering: tuple[str, str] | str | None
    partials: tuple[Callable, Callable] | None = None
    reads: tuple[tuple, tuple] = ((), ())
    zero_derivative: bool = False
    dtypes: tuple[str, ...] = ("f64", "i64")
    family: str = "binary"  # binary | compare | logic
    out: str | None = None  # the result's dtype when it is not the operands'
    since: str = "1.1"


def _int_checked(fn):
    def apply(a, b):
        if a.dtype == np.int64 and np.any(b == 0):
            raise Fault("integer division by zero")
        return fn(a, b)
    return apply


def _max(a, b):
    return np.where((a >= b) | (a != a), a, b)


def _min(a, b):
    return np.where((a <= b) | (a != a), a, b)


def _guarded(b, zero_where, slope):
    """`slope`, but 0 where `zero_where` holds (pow's partials at b == 0 and at a == 0, as JAX's)."""
    return b.op("select", zero_where, b.const(0.0), slope)


def _pow_base(b, x, y, out):  # y x^(y-1), 0 where y == 0, so that x^0 has no NaN derivative at x = 0
    slope = b.op("mul", y, b.op("pow", x, b.op("sub", y, b.const(1.0))))
    return 1, [("mul", _guarded(b, b.op("eq", y, b.const(0.0)), slope))]


def _pow_exponent(b, x, y, out):  # x^y log x, 0 where x == 0
    slope = b.op("mul", out, b.op("log", x))
    return 1, [("mul", _guarded(b, b.op("eq", x, b.const(0.0)), slope))]


def _atan2_partials():
    def radius(b, y, x):
        return b.op("add", b.op("mul", x, x), b.op("mul", y, y))
    return (lambda b, y, x, out: (1, [("mul", b.op("div", x, radius(b, y, x)))]),  # d/dy = x / r^2
            lambda b, y, x, out: (1, [("mul", b.op("neg", b.op("div", y, radius(b, y, x))))]))  # d/dx = -y / r^2


_ONE = lambda b, x, y, out: (1, [])  # noqa: E731
_MINUS_ONE = lambda b, x, y, out: (-1, [])  # noqa: E731

BINARY: tuple[Binary, ...] = (
    Binary("add", np.add, "a + b", ("fadd", "add"), (_ONE, _ONE)),
    Binary("sub", np.subtract, "a - b", ("fsub", "sub"), (_ONE, _MINUS_ONE)),
    Binary("mul", np.multiply, "a * b", ("fmul", "mul"),
           (lambda b, x, y, out: (1, [("mul", y)]), lambda b, x, y, out: (1, [("mul", x)])), ((1,), (0,))),
    Binary("div", np.divide, "a / b (true division)", ("fdiv", "fdiv"),
           (lambda b, x, y, out: (1, [("div", y)]), lambda b, x, y, out: (-1, [("mul", out), ("div", y)])),
           ((1,), (1, "out")), dtypes=("f64",)),
    Binary("floordiv", _int_checked(np.floor_divide), "a // b, rounding down as in Python", None,
           zero_derivative=True),
    # a % b = a - floor(a / b) * b, and floor has zero derivative
    Binary("mod", _int_checked(np.mod), "a % b, with the sign of b as in Python", None,
           (_ONE, lambda b, x, y, out: (-1, [("mul", b.op("floor", b.op("div", x, y)))])), ((), (0, 1))),
    Binary("pow", np.power, "a ^ b", "llvm.pow", (_pow_base, _pow_exponent), ((0, 1), (0, "out")),
           dtypes=("f64",)),
    Binary("atan2", np.arctan2, "atan2(y, x): the angle of the point (x, y), in [-pi, pi], as NumPy's arctan2",
           "atan2", _atan2_partials(), ((0, 1), (0, 1)), dtypes=("f64",), since="2.0"),
    Binary("max", _max, "elementwise max; ties and the derivative go to a", None),
    Binary("min", _min, "elementwise min; ties and the derivative go to a", None),
    *(Binary(name, fn, f"comparison {name}", None, zero_derivative=True, dtypes=("f64", "i64", "bool"),
             family="compare", out="bool")
      for name, fn in [("lt", np.less), ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal),
                       ("eq", np.equal), ("ne", np.not_equal)]),
    Binary("and", np.logical_and, "logical and", ("and_", "and_"), zero_derivative=True, dtypes=("bool",),
           family="logic"),
    Binary("or", np.logical_or, "logical or", ("or_", "or_"), zero_derivative=True, dtypes=("bool",), family="logic"),
)
