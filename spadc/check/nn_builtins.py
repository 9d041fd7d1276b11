"""Builtins of version 2.0 for networks and statistics (LANGUAGE.md section 10), composed of
primitives as PyTorch and NumPy define them: `atan2`, the activations `gelu` `silu` `elu`
`leaky_relu` `clip`, the statistics `var` `std` and the losses `bce` `huber`.

Invariant: each derivative convention follows from the primitives used (written down at each
function): `where`-style selects give the side not taken exactly zero.
"""

from __future__ import annotations

import math

from ..errors import SpadcError
from . import axes


def atan2(chk, args, kw, node):
    y, x = chk.broadcast_all([chk.to_float(a, "`atan2`", node.loc) for a in args], "`atan2`", node.loc)
    return chk.prim("atan2", [y, x], node.loc)


# ---- activations ----------------------------------------------------------------------------------

def slope(chk, kw, name, default):
    """The constant keyword `a` of elu and leaky_relu."""
    return chk.const_float(kw["a"], f"the `a` of `{name}`") if "a" in kw else default


def gelu(chk, args, kw, node):
    # The exact form, PyTorch's default: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
    x, loc = chk.to_float(args[0], "`gelu`", node.loc), node.loc
    scaled = chk.prim("mul", [x, chk.constant(1.0 / math.sqrt(2.0), loc)], loc)
    cdf = chk.prim("mul", [chk.constant(0.5, loc), chk.prim("add", [chk.constant(1.0, loc), chk.prim(
        "erf", [scaled], loc)], loc)], loc)
    return chk.prim("mul", [x, cdf], loc)


def silu(chk, args, kw, node):
    x = chk.to_float(args[0], "`silu`", node.loc)
    return chk.prim("mul", [x, chk.prim("sigmoid", [x], node.loc)], node.loc)


def negative_part(chk, x, below, node):
    """x where x > 0, else `below` (the derivative at 0 is below's, as PyTorch's)."""
    positive = chk.prim("gt", [x, chk.constant(0.0, node.loc)], node.loc)
    return chk.prim("select", [positive, x, below], node.loc)


def elu(chk, args, kw, node):
    x = chk.to_float(args[0], "`elu`", node.loc)
    below = chk.prim("mul", [chk.constant(slope(chk, kw, "elu", 1.0), node.loc), chk.prim("expm1", [x], node.loc)],
                     node.loc)
    return negative_part(chk, x, below, node)


def leaky_relu(chk, args, kw, node):
    x = chk.to_float(args[0], "`leaky_relu`", node.loc)
    below = chk.prim("mul", [chk.constant(slope(chk, kw, "leaky_relu", 0.01), node.loc), x], node.loc)
    return negative_part(chk, x, below, node)


def clip(chk, args, kw, node):
    """torch.clamp, min(max(x, lo), hi): NaN kept; the derivative is 1 for x where lo <= x <= hi, and
    goes to the bound where it is taken; with lo > hi every entry is hi, as in PyTorch."""
    x, lo, hi = chk.broadcast_all([chk.to_float(a, "`clip`", node.loc) for a in args], "`clip`", node.loc)
    raised = chk.prim("select", [chk.prim("lt", [x, lo], node.loc), lo, x], node.loc)
    return chk.prim("select", [chk.prim("gt", [raised, hi], node.loc), hi, raised], node.loc)


# ---- statistics and losses ---------------------------------------------------------------------

def variance(chk, x, axis, loc):
    """NumPy's var (ddof=0): the mean square deviation from the mean, over `axis` or everything."""
    deviation = chk.prim("sub", [x, axes.restore_axis(chk, axes.mean(chk, x, axis, loc), x, axis, loc)], loc)
    return axes.mean(chk, chk.prim("mul", [deviation, deviation], loc), axis, loc)


def var(chk, args, kw, node):
    x = chk.to_float(args[0], "`var`", node.loc)
    if x.type.rank == 0:
        return chk.constant(0.0, node.loc)
    return variance(chk, x, axes.axis_keyword(chk, kw, x.type.rank, "var", node), node.loc)


def std(chk, args, kw, node):
    return chk.prim("sqrt", [var(chk, args, kw, node)], node.loc)


def bce(chk, args, kw, node):
    """Binary cross-entropy on logits, averaged (PyTorch's binary_cross_entropy_with_logits):
    softplus(z) - z t, stable for any z, with derivative sigmoid(z) - t everywhere."""
    z, t = chk.broadcast_all([chk.to_float(a, "`bce`", node.loc) for a in args], "`bce`", node.loc)
    losses = chk.prim("sub", [chk.prim("softplus", [z], node.loc), chk.prim("mul", [z, t], node.loc)], node.loc)
    return axes.mean(chk, losses, None, node.loc)


def huber(chk, args, kw, node):
    """PyTorch's huber_loss, averaged: d^2 / 2 where |d| < delta, else delta (|d| - delta / 2)."""
    delta = chk.const_float(kw["delta"], "the `delta` of `huber`") if "delta" in kw else 1.0
    if delta <= 0.0:
        raise SpadcError(f"the `delta` of `huber` must be positive, got {delta}", kw["delta"].loc)
    a, b = chk.broadcast_all([chk.to_float(x, "`huber`", node.loc) for x in args], "`huber`", node.loc)
    d = chk.prim("sub", [a, b], node.loc)
    size = chk.prim("abs", [d], node.loc)
    inside = chk.prim("mul", [chk.constant(0.5, node.loc), chk.prim("mul", [d, d], node.loc)], node.loc)
    outside = chk.prim("mul", [chk.constant(delta, node.loc), chk.prim(
        "sub", [size, chk.constant(0.5 * delta, node.loc)], node.loc)], node.loc)
    near = chk.prim("lt", [size, chk.constant(delta, node.loc)], node.loc)
    return axes.mean(chk, chk.prim("select", [near, inside, outside], node.loc), None, node.loc)


def digamma(chk, args, kw, node):
    """The derivative of lgamma (psi), as SciPy's; NaN at the poles 0, -1, -2, ..."""
    return chk.prim("polygamma", [chk.to_float(args[0], "`digamma`", node.loc)], node.loc, n=0)
