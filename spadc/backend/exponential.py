"""`exp`, `expm1` and `tanh` in straight-line LLVM arithmetic, so that the loop vectoriser can run
them four or eight entries at a time: a C library call per entry cannot be vectorised, and in an LSTM
the calls were 57% of the gradient's time (sigmoids and tanhs of every gate, every step).

exp(x): x = k ln2 + r with k = rint(x / ln2) and |r| <= ln2 / 2 (Cody and Waite's split of ln2 in
two, so that k ln2_hi is exact), e^r by its Taylor polynomial of degree 13 (truncation below 1e-17
relative), times 2^k built from its bits in two halves (so that results near overflow, and gradual
underflow, need no branch). expm1 below 1 in magnitude by its own Taylor polynomial (no
cancellation), else exp(x) - 1 (which loses at most e / (e - 1), 1.6 units). tanh(|x|) = t / (t + 2) with t = expm1(2 |x|), the sign copied back.

Invariants:
- Computed in double whatever the program's float type (an f32 build rounds the result once).
- No branch and no call but intrinsics LLVM vectorises (rint, fabs, copysign); no fast-math flag,
  so the result is the same bits on every target and in every build (JIT and ahead of time).
- Accuracy against NumPy's (glibc's) functions: measured in tests/test_exponential.py, within 2
  units in the last place for exp and tanh, and 3 for expm1 (its subtraction above ln2 / 2).
- NaN gives NaN, +inf gives inf (tanh: 1), -inf gives 0 (expm1: -1, tanh: -1); -0 keeps its sign.
"""

from __future__ import annotations

import math

from llvmlite import ir

DOUBLE, I64 = ir.DoubleType(), ir.IntType(64)
_LOG2E = 1.0 / math.log(2.0)
_LN2_HI = 6.93147180369123816490e-01  # ln 2 with its last 32 bits zero: k * _LN2_HI is exact for |k| < 2^21
_LN2_LO = 1.90821492927058770002e-10  # ln 2 - _LN2_HI
_LIMIT = 1100.0  # beyond it e^x is inf or 0 in double; clamping first keeps k in range
_DEGREE = 13
_EXPM1_DEGREE = 20  # expm1's own series below |x| = 1: truncation 1/21! < 2e-20; above, e^x - 1 cancels little
_TANH_ONE = 19.0625  # from here on 1 - tanh(x) < 2^-54: tanh rounds to 1, and is 1


def call(e, name: str, *args):
    """An LLVM intrinsic of doubles (`llvm.fabs` -> `llvm.fabs.f64`), declared once per module."""
    module, symbol = e.function.module, f"{name}.f64"
    function = module.globals.get(symbol) or ir.Function(module, ir.FunctionType(DOUBLE, [DOUBLE] * len(args)),
                                                          name=symbol)
    return e.b.call(function, list(args))


def _d(value: float):
    return ir.Constant(DOUBLE, value)


def _horner(b, x, coefficients):
    """sum c_i x^i, highest power first."""
    total = _d(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        total = b.fadd(b.fmul(total, x), _d(c))
    return total


def _power_of_two(b, k):
    return b.bitcast(b.shl(b.add(k, ir.Constant(I64, 1023)), ir.Constant(I64, 52)), DOUBLE)


def exp_double(e, x):
    b = e.b
    limited = b.select(b.fcmp_ordered(">", x, _d(_LIMIT)), _d(_LIMIT),
                       b.select(b.fcmp_ordered("<", x, _d(-_LIMIT)), _d(-_LIMIT), x))
    k_float = call(e, "llvm.rint", b.fmul(limited, _d(_LOG2E)))
    k_float = b.select(b.fcmp_unordered("uno", x, x), _d(0.0), k_float)  # (NaN: r carries it; k stays an int)
    r = b.fsub(b.fsub(limited, b.fmul(k_float, _d(_LN2_HI))), b.fmul(k_float, _d(_LN2_LO)))
    polynomial = _horner(b, r, [1.0 / math.factorial(i) for i in range(_DEGREE + 1)])
    k = b.fptosi(k_float, I64)
    half = b.ashr(k, ir.Constant(I64, 1))
    return b.fmul(b.fmul(polynomial, _power_of_two(b, half)), _power_of_two(b, b.sub(k, half)))


def expm1_double(e, x):
    b = e.b
    series = b.fmul(x, _horner(b, x, [1.0 / math.factorial(i + 1) for i in range(_EXPM1_DEGREE)]))
    small = b.fcmp_ordered("<", call(e, "llvm.fabs", x), _d(1.0))
    return b.select(small, series, b.fsub(exp_double(e, x), _d(1.0)))


def tanh_double(e, x):
    b = e.b
    size = call(e, "llvm.fabs", x)
    saturated = b.fcmp_ordered(">=", size, _d(_TANH_ONE))
    t = expm1_double(e, b.fmul(_d(2.0), b.select(saturated, _d(0.0), size)))  # (never inf / inf)
    return call(e, "llvm.copysign", b.select(saturated, _d(1.0), b.fdiv(t, b.fadd(t, _d(2.0)))), x)


def in_double(function):
    """`function` of a double, for the program's float type (an f32 value widened, then rounded)."""
    def emit(e, x):
        if isinstance(e.float, ir.DoubleType):
            return function(e, x)
        return e.b.fptrunc(function(e, e.b.fpext(x, DOUBLE)), e.float)
    return emit


exp = in_double(exp_double)
expm1 = in_double(expm1_double)
tanh = in_double(tanh_double)
