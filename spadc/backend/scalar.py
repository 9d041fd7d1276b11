"""The scalar functions of the elementwise primitives, in LLVM: one entry of `SCALAR` per primitive.

Each computes what the primitive's NumPy reference computes for one entry, with the same tie and
NaN conventions (spadc/ir/primitives.py). Transcendentals are LLVM intrinsics or libm calls, for
the program's float type (double, or float with f32).

Invariants:
- Integer division never executes with a zero or overflowing divisor: zero is a run-time error
  (checked first), and INT_MIN / -1 is computed from a safe divisor whose quotient is discarded.
"""

from __future__ import annotations

import math

from llvmlite import ir

from ..ir import binary, elementwise, special
from . import exponential

I1, I64 = ir.IntType(1), ir.IntType(64)


# ---- math functions ----------------------------------------------------------------

def _function(e, name: str, arity: int = 1):
    """An LLVM intrinsic (`llvm.exp`) or a libm function (`tanh`), for the float type in use."""
    module = e.function.module
    double = isinstance(e.float, ir.DoubleType)
    if name.startswith("llvm."):
        symbol = f"{name}.{'f64' if double else 'f32'}"
    else:
        symbol = name if double else name + "f"
    existing = module.globals.get(symbol)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(e.float, [e.float] * arity), name=symbol)


def call(e, name, *args):
    return e.b.call(_function(e, name, len(args)), list(args))


def fconst(e, x: float):
    return ir.Constant(e.float, x)


def is_float(value) -> bool:
    return value.type.dtype == "f64"


# ---- scalar functions of the elementwise primitives -------------------------------------

def _sign(e, op, x):
    b = e.b
    if is_float(op.args[0]):
        negative = b.select(b.fcmp_ordered("<", x, fconst(e, 0.0)), fconst(e, -1.0), x)
        return b.select(b.fcmp_ordered(">", x, fconst(e, 0.0)), fconst(e, 1.0), negative)
    return b.select(b.icmp_signed(">", x, I64(0)), I64(1), b.select(b.icmp_signed("<", x, I64(0)), I64(-1), I64(0)))


def _abs(e, op, x):
    if is_float(op.args[0]):
        return call(e, "llvm.fabs", x)
    return e.b.select(e.b.icmp_signed("<", x, I64(0)), e.b.neg(x), x)


def _sigmoid(e, op, x):
    b = e.b
    decay = exponential.exp(e, b.fneg(call(e, "llvm.fabs", x)))
    denominator = b.fadd(fconst(e, 1.0), decay)
    return b.select(b.fcmp_ordered(">=", x, fconst(e, 0.0)), b.fdiv(fconst(e, 1.0), denominator), b.fdiv(decay, denominator))


def _softplus(e, op, x):
    # NumPy's logaddexp(0, x), branch for branch.
    b = e.b
    below = call(e, "log1p", exponential.exp(e, x))
    above = b.fadd(x, call(e, "log1p", exponential.exp(e, b.fneg(x))))
    at_zero = b.select(b.fcmp_ordered("==", x, fconst(e, 0.0)), fconst(e, math.log(2.0)), x)
    return b.select(b.fcmp_ordered("<", x, fconst(e, 0.0)), below, b.select(b.fcmp_ordered(">", x, fconst(e, 0.0)), above, at_zero))


def _polygamma(e, op, x):
    """psi^(n)(x) as spadc/ir/special.py computes it: reflect x < 0, shift past SHIFT_TO (unrolled,
    branch-free), then the asymptotic series."""
    n, b = op.attrs["n"], e.b
    one, zero = fconst(e, 1.0), fconst(e, 0.0)
    pole = b.and_(b.fcmp_ordered("<=", x, zero), b.fcmp_ordered("==", x, call(e, "llvm.floor", x)))
    reflected = b.and_(b.fcmp_ordered("<", x, zero), b.not_(pole))
    shifted = b.select(reflected, b.fsub(one, x), b.select(pole, one, x))
    total = zero
    for _ in range(special.SHIFT_STEPS):
        small = b.fcmp_ordered("<", shifted, fconst(e, special.SHIFT_TO))
        term = b.fdiv(one, shifted) if n == 0 else b.fdiv(fconst(e, math.factorial(n)), _power(e, shifted, n + 1))
        total = b.select(small, b.fadd(total, term), total)
        shifted = b.select(small, b.fadd(shifted, one), shifted)
    inverse = b.fdiv(one, shifted)
    square, power = b.fmul(inverse, inverse), _power(e, inverse, n + 2)
    series = zero
    for coefficient in special.series_coefficients(n):
        series = b.fadd(series, b.fmul(fconst(e, coefficient), power))
        power = b.fmul(power, square)
    if n == 0:
        value = b.fsub(b.fsub(b.fsub(call(e, "llvm.log", shifted), b.fmul(fconst(e, 0.5), inverse)), series), total)
        angle = b.fmul(fconst(e, math.pi), x)
        value = b.select(reflected, b.fsub(value, b.fdiv(fconst(e, math.pi), call(e, "tan", angle))), value)
    else:
        lead = b.fadd(b.fmul(fconst(e, math.factorial(n - 1)), _power(e, inverse, n)),
                      b.fmul(fconst(e, math.factorial(n) / 2), _power(e, inverse, n + 1)))
        value = b.fadd(b.fadd(lead, series), total)
        value = value if n % 2 else b.fneg(value)
        if n in (1, 2):
            angle = b.fmul(fconst(e, math.pi), x)
            sine = call(e, "llvm.sin", angle)
            if n == 1:
                reflection = b.fsub(b.fdiv(fconst(e, math.pi ** 2), b.fmul(sine, sine)), value)
            else:
                cube = b.fmul(b.fmul(sine, sine), sine)
                reflection = b.fsub(value, b.fdiv(b.fmul(fconst(e, 2 * math.pi ** 3), call(e, "llvm.cos", angle)), cube))
            value = b.select(reflected, reflection, value)
        else:
            value = b.select(reflected, fconst(e, math.nan), value)
    return b.select(b.or_(pole, b.fcmp_unordered("uno", x, x)), fconst(e, math.nan), value)


def _power(e, x, k: int):
    result = x
    for _ in range(k - 1):
        result = e.b.fmul(result, x)
    return result


def _to_float(e, op, x):
    if op.args[0].type.dtype == "bool":
        return e.b.uitofp(x, e.float)
    return e.b.sitofp(x, e.float)


def _to_int(e, op, x):
    fits = e.b.fcmp_ordered("<", call(e, "llvm.fabs", x), fconst(e, 2.0 ** 63))
    e.check(fits, "int() of a value that is not finite or does not fit in i64", op.loc, I64(0))
    return e.b.fptosi(x, I64)


def _float_divmod(e, a, b_):
    """NumPy's float divmod: (a // b, a % b) with the sign of b, exactly as npy_divmod computes them."""
    b = e.b
    mod = call(e, "fmod", a, b_)
    div = b.fdiv(b.fsub(a, mod), b_)
    fix = b.and_(b.fcmp_unordered("!=", mod, fconst(e, 0.0)),
                 b.xor(b.fcmp_ordered("<", b_, fconst(e, 0.0)), b.fcmp_ordered("<", mod, fconst(e, 0.0))))
    mod = b.select(fix, b.fadd(mod, b_), b.select(b.fcmp_ordered("==", mod, fconst(e, 0.0)),
                                                  call(e, "llvm.copysign", fconst(e, 0.0), b_), mod))
    div = b.select(fix, b.fsub(div, fconst(e, 1.0)), div)
    floor = call(e, "llvm.floor", div)
    floor = b.select(b.fcmp_ordered(">", b.fsub(div, floor), fconst(e, 0.5)), b.fadd(floor, fconst(e, 1.0)), floor)
    floor = b.select(b.fcmp_ordered("==", div, fconst(e, 0.0)), call(e, "llvm.copysign", fconst(e, 0.0), b.fdiv(a, b_)), floor)
    by_zero = b.fcmp_ordered("==", b_, fconst(e, 0.0))
    return b.select(by_zero, b.fdiv(a, b_), floor), mod


def _int_divmod(e, op, a, b_):
    """Python's floor division and modulo on i64; division by zero is a run-time error."""
    b = e.b
    e.check(b.icmp_signed("!=", b_, I64(0)), "integer division by zero", op.loc, a)
    minus_one = b.icmp_signed("==", b_, I64(-1))
    safe = b.select(minus_one, I64(1), b_)  # never divide INT_MIN by -1 (it traps)
    quotient, remainder = b.sdiv(a, safe), b.srem(a, safe)
    adjust = b.and_(b.icmp_signed("!=", remainder, I64(0)), b.icmp_signed("<", b.xor(remainder, b_), I64(0)))
    quotient = b.select(adjust, b.sub(quotient, I64(1)), quotient)
    remainder = b.select(adjust, b.add(remainder, b_), remainder)
    return b.select(minus_one, b.neg(a), quotient), b.select(minus_one, I64(0), remainder)


def _floordiv(e, op, a, b_):
    return _float_divmod(e, a, b_)[0] if is_float(op.args[0]) else _int_divmod(e, op, a, b_)[0]


def _mod(e, op, a, b_):
    return _float_divmod(e, a, b_)[1] if is_float(op.args[0]) else _int_divmod(e, op, a, b_)[1]


def _extremum(compare):
    def emit(e, op, a, b_):
        if is_float(op.args[0]):
            first = e.b.or_(e.b.fcmp_ordered(compare, a, b_), e.b.fcmp_unordered("!=", a, a))
        else:
            first = e.b.icmp_signed(compare, a, b_)
        return e.b.select(first, a, b_)
    return emit


def _arithmetic(float_op, int_op):
    def emit(e, op, a, b_):
        return getattr(e.b, float_op if is_float(op.args[0]) else int_op)(a, b_)
    return emit


def _comparison(symbol):
    def emit(e, op, a, b_):
        dtype = op.args[0].type.dtype
        if dtype == "f64":
            # NaN compares false, except `!=`, which is true: IEEE and NumPy agree.
            return e.b.fcmp_unordered(symbol, a, b_) if symbol == "!=" else e.b.fcmp_ordered(symbol, a, b_)
        return (e.b.icmp_signed if dtype == "i64" else e.b.icmp_unsigned)(symbol, a, b_)
    return emit


def _libm(name):
    return lambda e, op, x: call(e, name, x)


SCALAR = {
    "neg": lambda e, op, x: e.b.fneg(x) if is_float(op.args[0]) else e.b.neg(x),
    "abs": _abs,
    "sign": _sign,
    "sigmoid": _sigmoid,
    "exp": lambda e, op, x: exponential.exp(e, x),
    "expm1": lambda e, op, x: exponential.expm1(e, x),
    "tanh": lambda e, op, x: exponential.tanh(e, x),
    "relu": lambda e, op, x: e.b.select(e.b.fcmp_unordered(">", x, fconst(e, 0.0)), x, fconst(e, 0.0)),  # NaN kept
    "softplus": _softplus,
    "polygamma": _polygamma,
    "stop_gradient": lambda e, op, x: x,
    "not": lambda e, op, x: e.b.xor(x, I1(1)),
    "to_float": _to_float,
    "to_int": _to_int,
    "floordiv": _floordiv,
    "mod": _mod,
    "max": _extremum(">="),
    "min": _extremum("<="),
    "lt": _comparison("<"), "le": _comparison("<="), "gt": _comparison(">"), "ge": _comparison(">="),
    "eq": _comparison("=="), "ne": _comparison("!="),
    "select": lambda e, op, c, a, b_: e.b.select(c, a, b_),
}
for _record in elementwise.UNARY:  # a function with a `lowering` is one call; the others are emitted above
    if _record.lowering is not None:
        SCALAR[_record.name] = _libm(_record.lowering)
for _record in binary.BINARY:  # an instruction (float, integer) or a call; the others are emitted above
    if isinstance(_record.lowering, tuple):
        SCALAR[_record.name] = _arithmetic(*_record.lowering)
    elif _record.lowering is not None:
        SCALAR[_record.name] = (lambda name: lambda e, op, a, b_: call(e, name, a, b_))(_record.lowering)
