"""The elementwise functions of one operand: one record per function, holding everything about it.

A record gives, side by side, what every stage needs (JAX's lax keeps a primitive's rules together
in the same way): the NumPy reference (the interpreter's rule and the tests' oracle), the LLVM
lowering, the derivative (from which both the adjoint and the tangent rule are made), what the tape
keeps for it, its line in the reference, and the language version that added it. Each is also a
builtin function of the same name (LANGUAGE.md section 7 or 10). The stages
read these records (spadc/ir/primitives.py, spadc/ad/rules.py, spadc/ad/tangents.py,
spadc/backend/scalar.py, spadc/check/builtins.py); adding a function is adding a record here and
a line to the tests' table of functions (tests/test_elementwise.py).

Invariants:
- `derivative(b, x, out)` builds f'(x) in IR with the builder `b` (`b.op`, `b.const`) from the
  operand `x`, the result `out` or both, and reads only what `reads` names: that is what the tape
  keeps. With `divides`, it builds instead the d with f'(x) = 1 / d, and the chain rule divides by
  it (one rounding, as `g / x` for log).
- The chain rule is `g * f'(x)` guarded to exactly 0 where `g` is 0 (spadc/ad/rules.py, `times`), so
  an infinite derivative on the side of a `where` not taken never becomes NaN.
- `lowering` is an LLVM intrinsic (`llvm.exp`) or a C math library function (`tanh`), called for
  the program's float type (`sinhf` in f32 builds); None means an emitter of the same name in
  spadc/backend/scalar.py (for functions with branches, such as a stable sigmoid, and for exp,
  expm1 and tanh, which are arithmetic the vectoriser can run: spadc/backend/exponential.py).
- `derivative` None means the function has a zero derivative when `zero_derivative`, and a rule of
  its own in spadc/ad/rules.py and spadc/ad/tangents.py otherwise (relu: it keeps one byte, not
  eight, on the tape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@dataclass(frozen=True)
class Unary:
    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    lowering: str | None
    derivative: Callable | None
    reads: tuple[str, ...]  # "x" and/or "out": what the derivative reads (and the tape keeps)
    doc: str
    divides: bool = False
    zero_derivative: bool = False
    dtypes: tuple[str, ...] = ("f64",)
    since: str = "1.1"  # the language version that added it (a 1.1 program's own fn of a 2.0 name wins)


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # two branches so that neither exp overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _lgamma(x):
    # math.lgamma raises at the poles, where C's lgamma (the compiled code's) returns +inf
    return np.vectorize(lambda v: math.lgamma(v) if not (v <= 0 and v == math.floor(v)) else math.inf,
                        otypes=[np.float64])(x)


def _one_minus_square_root(b, x):
    return b.op("sqrt", b.op("sub", b.const(1.0), b.op("mul", x, x)))


UNARY: tuple[Unary, ...] = (
    Unary("abs", np.abs, None, lambda b, x, out: b.op("sign", x), ("x",), "|x|; abs'(0) = 0", dtypes=("f64", "i64")),
    Unary("sign", np.sign, None, None, (), "-1, 0 or 1; zero derivative", zero_derivative=True, dtypes=("f64", "i64")),
    Unary("exp", np.exp, None, lambda b, x, out: out, ("out",), "e^x"),
    Unary("log", np.log, "llvm.log", lambda b, x, out: x, ("x",), "natural logarithm", divides=True),
    Unary("log1p", np.log1p, "log1p", lambda b, x, out: b.op("add", b.const(1.0), x), ("x",), "log(1 + x)",
          divides=True),
    Unary("expm1", np.expm1, None, lambda b, x, out: b.op("add", out, b.const(1.0)), ("out",), "e^x - 1"),
    Unary("sqrt", np.sqrt, "llvm.sqrt", lambda b, x, out: b.op("mul", b.const(2.0), out), ("out",), "square root",
          divides=True),
    Unary("sin", np.sin, "llvm.sin", lambda b, x, out: b.op("cos", x), ("x",), "sine"),
    Unary("cos", np.cos, "llvm.cos", lambda b, x, out: b.op("neg", b.op("sin", x)), ("x",), "cosine"),
    Unary("tan", np.tan, "tan", lambda b, x, out: b.op("add", b.const(1.0), b.op("mul", out, out)), ("out",),
          "tangent"),
    Unary("tanh", np.tanh, None, lambda b, x, out: b.op("sub", b.const(1.0), b.op("mul", out, out)), ("out",),
          "hyperbolic tangent"),
    Unary("sigmoid", _sigmoid, None, lambda b, x, out: b.op("mul", out, b.op("sub", b.const(1.0), out)), ("out",),
          "1 / (1 + e^-x)"),
    Unary("relu", lambda x: np.where((x > 0) | (x != x), x, 0.0), None, None, (),
          "max(x, 0), NaN kept as in NumPy; relu'(0) = 0"),
    Unary("softplus", lambda x: np.logaddexp(0.0, x), None, lambda b, x, out: b.op("sigmoid", x), ("x",),
          "log(1 + e^x)"),
    Unary("floor", np.floor, "llvm.floor", None, (), "largest integer <= x; zero derivative", zero_derivative=True),
    # Version 2.0 (LANGUAGE.md section 10)
    Unary("round", np.round, "llvm.rint", None, (), "nearest integer, halves to even as NumPy; zero derivative",
          zero_derivative=True, since="2.0"),
    Unary("sinh", np.sinh, "sinh", lambda b, x, out: b.op("cosh", x), ("x",), "hyperbolic sine", since="2.0"),
    Unary("cosh", np.cosh, "cosh", lambda b, x, out: b.op("sinh", x), ("x",), "hyperbolic cosine", since="2.0"),
    Unary("asin", np.arcsin, "asin", lambda b, x, out: _one_minus_square_root(b, x), ("x",),
          "inverse sine, in [-pi/2, pi/2]; NaN outside [-1, 1]", divides=True, since="2.0"),
    Unary("acos", np.arccos, "acos", lambda b, x, out: b.op("neg", _one_minus_square_root(b, x)), ("x",),
          "inverse cosine, in [0, pi]; NaN outside [-1, 1]", divides=True, since="2.0"),
    Unary("atan", np.arctan, "atan", lambda b, x, out: b.op("add", b.const(1.0), b.op("mul", x, x)), ("x",),
          "inverse tangent, in (-pi/2, pi/2)", divides=True, since="2.0"),
    Unary("lgamma", _lgamma, "lgamma", lambda b, x, out: b.op("polygamma", x, n=0), ("x",),
          "log |Gamma(x)|; its derivative is digamma", since="2.0"),
    Unary("erf", _erf, "erf", lambda b, x, out: b.op("mul", b.const(_TWO_OVER_SQRT_PI), b.op("exp", b.op(
        "neg", b.op("mul", x, x)))), ("x",), "the error function: 2/sqrt(pi) times the integral of e^-t^2 over [0, x]",
          since="2.0"),
)
