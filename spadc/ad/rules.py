"""Adjoint rules: one record per primitive, keyed by the names of `spadc.ir.primitives`.

A rule receives the output adjoint `g` and returns one contribution per operand (None for none).
It reads primal values only through `P.arg(k)`, `P.out()` and `P.derived(name, compute)` (a small
value the forward pass computes for it, such as a comparison's 1-byte result), and only those its
record declares in `saves`: that declaration is what the tape must keep for this primitive (its
residuals), and the driver enforces it. Rules are "dumb": the driver (spadc/ad/reverse.py) sums fan-out, reduces
contributions to scalar operands, skips inactive operands, and handles regions and tapes.

Conventions (LANGUAGE.md section 7): relu'(0) = 0, abs'(0) = 0; max/min send the derivative to the
selected operand (the first on ties), reductions to the first maximal entry; `select` gives the
side not chosen an adjoint of exactly zero (a select, never a multiplication by a mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir import binary, elementwise, primitives, reductions
from ..ir.reductions import restore_axis


@dataclass(frozen=True)
class Rule:
    saves: tuple  # what the rule reads: operand positions, "out", "indices" (the i64 operands), derived names
    fn: Callable | None  # None: the derivative is zero (or the operands are not differentiable)


ZERO = Rule((), None)
ADJOINTS: dict[str, Rule] = {}


def _rule(name, saves=()):
    def register(fn):
        ADJOINTS[name] = Rule(tuple(saves), fn)
        return fn
    return register


for _name in ("stop_gradient", "not", "to_float", "to_int", "const", "eye", "onehot", "fail_if", "dropout_mask", "first_true",
              "gate_pack", "gate_unpack", "gate_mask", "score_add", "pack_bits", "unpack_bits", "record", "field",
              "gate_outer_add", "gate_conv_weight_grad", "argmax"):
    ADJOINTS[_name] = ZERO


# ---- helpers ---------------------------------------------------------------------

def times(c, g, partial, kind: str = "mul"):
    """g * partial (or g / partial), exactly 0 where g is 0 even if the partial is infinite or NaN
    there (log at 0, sqrt below 0, a product with an infinite operand): so the side of a `where`
    that was not selected, whose g is 0, cannot leak NaN into gradients (LANGUAGE.md section 6).

    The select is marked `guard`: its tangent is the product's, guarded the same way (tangents.py),
    not 0 where g is 0. Forward over reverse needs the term dg * partial there: where a cotangent
    is exactly 0 (tied logits) a Hessian product lost it once."""
    return c.op("select", c.op("eq", g, c.const(0.0)), c.const(0.0), c.op(kind, g, partial), guard=True)


# ---- elementwise -------------------------------------------------------------------

@_rule("neg")
def _neg(c, op, g, wanted, P):
    return [c.op("neg", g)]


@_rule("relu", saves=("positive",))
def _relu(c, op, g, wanted, P):
    positive = P.derived("positive", lambda f: f.op("gt", f.arg(0), f.const(0.0)))  # 1 byte a value on the tape
    return [c.op("select", positive, g, c.const(0.0))]


def _chain_rule(function):
    """g f'(x) for a function of spadc/ir/elementwise.py, from its record's derivative."""
    kind = "div" if function.divides else "mul"

    def rule(c, op, g, wanted, P):
        return [times(c, g, function.derivative(c, P.arg(0) if "x" in function.reads else None,
                                                P.out() if "out" in function.reads else None), kind)]
    return rule


for _record in elementwise.UNARY:
    if _record.zero_derivative:
        ADJOINTS[_record.name] = ZERO
    elif _record.derivative is not None:
        ADJOINTS[_record.name] = Rule(tuple(0 if r == "x" else r for r in _record.reads), _chain_rule(_record))


@_rule("polygamma", saves=(0,))
def _polygamma(c, op, g, wanted, P):
    return [times(c, g, c.op("polygamma", P.arg(0), n=op.attrs["n"] + 1))]


def chain(c, g, sign, factors):
    """sign * g op1 v1 op2 v2 ...: a partial of spadc/ir/binary.py applied to g (or to a tangent)."""
    for kind, value in factors:
        g = times(c, g, value, kind)
    return c.op("neg", g) if sign < 0 else g


def _binary_rule(function):
    def rule(c, op, g, wanted, P):
        contributions = []
        for partial, reads, w in zip(function.partials, function.reads, wanted):
            if not w:  # read nothing for it: what a partial reads is what the tape keeps
                contributions.append(None)
                continue
            x, y = (P.arg(k) if k in reads else None for k in (0, 1))
            contributions.append(chain(c, g, *partial(c, x, y, P.out() if "out" in reads else None)))
        return contributions
    return rule


for _record in binary.BINARY:
    if _record.zero_derivative:
        ADJOINTS[_record.name] = ZERO
    elif _record.partials is not None:
        ADJOINTS[_record.name] = Rule(tuple(dict.fromkeys(_record.reads[0] + _record.reads[1])), _binary_rule(_record))


def _pick(compare):
    def rule(c, op, g, wanted, P):
        # As the forward: ties and NaN pick a. Only which side won reaches the tape (1 byte a value).
        first = P.derived("first", lambda f: f.op("or", f.op(compare, f.arg(0), f.arg(1)), f.op("ne", f.arg(0), f.arg(0))))
        return [c.op("select", first, g, c.const(0.0)) if wanted[0] else None,
                c.op("select", first, c.const(0.0), g) if wanted[1] else None]
    return rule


ADJOINTS["max"] = Rule(("first",), _pick("ge"))
ADJOINTS["min"] = Rule(("first",), _pick("le"))


@_rule("select", saves=(0,))
def _select(c, op, g, wanted, P):
    cond = P.arg(0)
    return [None,
            c.op("select", cond, g, c.const(0.0)) if wanted[1] else None,
            c.op("select", cond, c.const(0.0), g) if wanted[2] else None]


# ---- reductions ----------------------------------------------------------------------

def _reduction_rule(reduction):
    def rule(c, op, g, wanted, P):
        axis, shape = op.attrs["axis"], op.args[0].type.shape
        weight = reduction.weight(c, P.arg(0) if 0 in reduction.saves else None,
                                  P.out() if "out" in reduction.saves else None, axis) if reduction.weight else None
        spread = restore_axis(c, g, shape, axis)
        if weight is None:
            return [spread]
        kind, w = weight
        return [times(c, spread, w) if kind == "mul" else c.op("select", w, spread, c.const(0.0))]
    return rule


for _reduction in reductions.REDUCTIONS:
    ADJOINTS[_reduction.name] = Rule(_reduction.saves, _reduction_rule(_reduction))


# ---- linear algebra, structure, convolution: their records (primitives.RECORDS) ----------------

for _record in primitives.RECORDS:
    ADJOINTS[_record.name] = Rule(_record.saves, _record.adjoint)
