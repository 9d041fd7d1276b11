"""Tangent rules: one per primitive, keyed by the names of `spadc.ir.primitives`, beside the adjoint
rules of spadc/ad/rules.py.

A rule receives the builder `t`, the primal op (its operands and result are at hand: forward mode
runs where the primal runs, so it keeps no tape) and `d`, one tangent per operand (None for an
operand that does not depend on the seeds), and returns the result's tangent (None for zero). The
driver (spadc/ad/forward.py) broadcasts a scalar tangent to the result's shape and handles regions.

Conventions are the adjoint's (LANGUAGE.md section 7): relu'(0) = abs'(0) = 0, max/min and
reductions pass the derivative of the selected operand (the first on ties), `select` the tangent of
the chosen side only; a tangent that is exactly 0 times an infinite or NaN partial is 0 (`times`).
Random and bookkeeping primitives are linear in their operand (a gate keeps the same entries of a
tangent as of its value) and never repeat their effects (scores, stored bytes) for a tangent.
"""

from __future__ import annotations

from typing import Callable

from ..ir import binary, elementwise, primitives, reductions
from ..ir.record import add_all, or_zeros
from ..ir.structure import linear_in_first
from .rules import chain, times

TANGENTS: dict[str, Callable | None] = {}  # None: the derivative is zero (or the operands are not differentiable)

for _name in ("stop_gradient", "not", "to_float", "to_int", "const", "eye", "onehot", "fail_if", "dropout_mask", "first_true", "pack_bits",
              "unpack_bits", "argmax", "gate_mask"):
    TANGENTS[_name] = None


def _tangent(name):
    def register(fn):
        TANGENTS[name] = fn
        return fn
    return register


def _chain_rule(function):
    """f'(x) dx for a function of spadc/ir/elementwise.py, from its record's derivative."""
    kind = "div" if function.divides else "mul"
    return lambda t, op, d: times(t, d[0], function.derivative(t, op.args[0], op.result), kind)


for _record in elementwise.UNARY:
    if _record.zero_derivative:
        TANGENTS[_record.name] = None
    elif _record.derivative is not None:
        TANGENTS[_record.name] = _chain_rule(_record)


@_tangent("polygamma")
def _polygamma(t, op, d):
    return times(t, d[0], t.op("polygamma", op.args[0], n=op.attrs["n"] + 1))


@_tangent("neg")
def _neg(t, op, d):
    return t.op("neg", d[0])


@_tangent("relu")
def _relu(t, op, d):
    return t.op("select", t.op("gt", op.args[0], t.const(0.0)), d[0], t.const(0.0))


# ---- binary elementwise ---------------------------------------------------------------

def _binary_tangent(function):
    def rule(t, op, d):
        x, y = op.args
        total = None
        for partial, dk in zip(function.partials, d):
            if dk is None:
                continue
            sign, factors = partial(t, x, y, op.result)
            term = chain(t, dk, 1, factors)
            if total is None:
                total = t.op("neg", term) if sign < 0 else term
            else:
                total = t.op("sub" if sign < 0 else "add", total, term)
        return total
    return rule


for _record in binary.BINARY:
    if _record.zero_derivative:
        TANGENTS[_record.name] = None
    elif _record.partials is not None:
        TANGENTS[_record.name] = _binary_tangent(_record)


def _pick(compare):
    def rule(t, op, d):
        a, b = op.args
        first = t.op("or", t.op(compare, a, b), t.op("ne", a, a))
        return t.op("select", first, d[0] if d[0] is not None else t.const(0.0), d[1] if d[1] is not None else t.const(0.0))
    return rule


TANGENTS["max"] = _pick("ge")
TANGENTS["min"] = _pick("le")


@_tangent("select")
def _select(t, op, d):
    if op.attrs.get("guard"):  # rules.times: select(g == 0, 0, g * partial), 0 * inf taken as 0
        if d[2] is None:
            return None
        # g * partial is smooth in g at g = 0 (when the partial is finite): its tangent there is
        # dg * partial, not 0. Only a NaN tangent (0 * inf) is taken as 0, under the same condition.
        undefined = t.op("and", op.args[0], t.op("ne", d[2], d[2]))
        return t.op("select", undefined, t.const(0.0), d[2], guard=True)
    return t.op("select", op.args[0], d[1] if d[1] is not None else t.const(0.0), d[2] if d[2] is not None else t.const(0.0))


# ---- reductions --------------------------------------------------------------------------

def _reduction_tangent(reduction):
    def rule(t, op, d):
        axis = op.attrs["axis"]
        weight = reduction.weight(t, op.args[0], op.result, axis) if reduction.weight else None
        if weight is None:
            return t.op(op.kind, d[0], axis=axis)
        kind, w = weight
        weighted = times(t, d[0], w) if kind == "mul" else t.op("select", w, d[0], t.const(0.0))
        return t.op("reduce_sum", weighted, axis=axis)
    return rule


for _reduction in reductions.REDUCTIONS:
    TANGENTS[_reduction.name] = _reduction_tangent(_reduction)


# ---- linear algebra, structure, convolution: their records (primitives.RECORDS) ----------------

for _record in primitives.RECORDS:
    TANGENTS[_record.name] = _record.tangent
# Linear in the record or the packed words they read; a field's other operands carry no tangent, even
# when a cond's record holds words that are none (the fuzzer's seed 500332).
for _name in ("field", "gate_unpack"):
    TANGENTS[_name] = linear_in_first


@_tangent("record")
def _record(t, op, d):
    # The same layout: words of an f64 value's tangent where the value is, a non-float value's own
    # words elsewhere (no tangent field ever reads them).
    return t.op("record", *[dk if dk is not None else t.zeros(a.type) if a.type.dtype == "f64" else a
                            for dk, a in zip(d, op.args)], **op.attrs)


# ---- path sampling: linear in their operands, without their effects -------------------------

@_tangent("gate_pack")
def _gate_pack(t, op, d):
    return t.op("gate_pack", d[0], **{**op.attrs, "scores": -1, "counted": False})


@_tangent("gate_outer_add")
def _gate_outer_add(t, op, d):
    acc, a, packed = op.args
    total = or_zeros(t, d[0], acc)
    if d[1] is not None:
        total = t.op("gate_outer_add", total, d[1], packed, **op.attrs)
    if d[2] is not None:
        total = t.op("gate_outer_add", total, a, d[2], **op.attrs)
    return total


@_tangent("gate_conv_weight_grad")
def _gate_conv_weight_grad(t, op, d):
    packed, g = op.args  # bilinear
    return add_all(t, [t.op(op.kind, d[0], g, **op.attrs) if d[0] is not None else None,
                       t.op(op.kind, packed, d[1], **op.attrs) if d[1] is not None else None])


@_tangent("score_add")
def _score_add(t, op, d):
    return d[0]  # the values pass through; their scores are the primal's business
