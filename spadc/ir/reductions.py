"""The reductions (sum, product, max, min over one axis or all): one record each, holding everything
about it (as spadc/ir/elementwise.py does for the functions of one operand).

A record gives, side by side: the NumPy reference, how the compiled loop combines two entries, and
the weight of each entry in the derivative, from which both the adjoint (g spread back over the
reduced axis, times the weight) and the tangent (the reduction of d times the weight) are made, and
what the tape keeps for it. The stages read these records (spadc/ir/primitives.py,
spadc/ad/rules.py, spadc/ad/tangents.py, spadc/backend/emitters.py).

Invariants:
- `weight(b, x, out, axis)` is None (every entry counts once: a sum), ("mul", w) (entry i's weight
  w_i, applied as `times` does: exactly 0 where the adjoint is 0) or ("select", mask) (the entries
  the derivative goes to, the rest get exactly 0); it reads only what `saves` names.
- `combine` is ("fadd", "add") for one LLVM instruction on floats and integers, or ">" / "<" for an
  extremum: the first maximal (minimal) entry wins, and NaN wins and stays (NumPy's max and min).
- Conventions (LANGUAGE.md section 7): the derivative of max and min goes to the first extremal
  entry; a product's derivative is exact at zeros (`product_partials`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Reduction:
    name: str
    numpy: Callable
    doc: str
    combine: tuple[str, str] | str
    weight: Callable | None
    saves: tuple = ()
    dtypes: tuple[str, ...] = ("f64", "i64")


def restore_axis(b, g, shape, axis):
    """Spread the adjoint of a reduction over the reduced axis (or over everything)."""
    if axis is not None:
        kept = shape[:axis] + (1,) + shape[axis + 1:]
        g = b.op("reshape", g, shape=kept)
    return b.op("broadcast", g, shape=shape) if g.type.shape != shape else g


def product_partials(b, x, axis):
    """d prod / d x_i, the product of the other entries, spread back to x's shape; computed without
    dividing by x_i so that zeros are exact: with no zero it is P / x_i, with one zero it is P' at the
    zero (P' the product of the nonzero entries) and 0 elsewhere, with two or more zeros it is 0."""
    shape = x.type.shape
    is_zero = b.op("eq", x, b.const(0.0))
    nonzero = b.op("select", is_zero, b.const(1.0), x)
    product = restore_axis(b, b.op("reduce_prod", nonzero, axis=axis), shape, axis)
    zeros = restore_axis(b, b.op("reduce_sum", b.op("to_float", is_zero), axis=axis), shape, axis)
    at_nonzero = b.op("select", b.op("eq", zeros, b.const(0.0)), b.op("div", product, nonzero), b.const(0.0))
    at_zero = b.op("select", b.op("eq", zeros, b.const(1.0)), product, b.const(0.0))
    return b.op("select", is_zero, at_zero, at_nonzero)


def _first_extremum(b, x, out, axis):
    """The first entry equal to the result (or the first NaN) along the axis: where max and min send
    the derivative."""
    hit = b.op("or", b.op("eq", x, restore_axis(b, out, x.type.shape, axis)), b.op("ne", x, x))
    return "select", b.op("first_true", hit, axis=axis)


REDUCTIONS: tuple[Reduction, ...] = (
    Reduction("reduce_sum", np.sum, "sum over one axis or all", ("fadd", "add"), None),
    Reduction("reduce_prod", np.prod, "product over one axis or all", ("fmul", "mul"),
              lambda b, x, out, axis: ("mul", product_partials(b, x, axis)), (0,)),
    Reduction("reduce_max", np.max, "maximum over one axis or all; the derivative goes to the first maximal entry",
              ">", _first_extremum, (0, "out")),
    Reduction("reduce_min", np.min, "minimum over one axis or all; the derivative goes to the first minimal entry",
              "<", _first_extremum, (0, "out")),
)
