"""Helpers for builtins that work along an axis: the `axis` keyword, counts, and a reduction's
result spread back over the axis it reduced (NumPy's keepdims, then broadcasting).

Invariant: an `axis` is checked against the rank and returned non-negative (None: every axis).
"""

from __future__ import annotations

from ..errors import SpadcError


def axis_keyword(chk, kwargs, rank: int, name: str, node) -> int | None:
    """The `axis` keyword of builtin `name` on a tensor of `rank`, non-negative; None when not given."""
    if "axis" not in kwargs:
        return None
    axis = chk.const_int(kwargs["axis"], f"the `axis` of {name}")
    if not -rank <= axis < rank:
        raise SpadcError(f"axis {axis} is out of range for a tensor of rank {rank}", kwargs["axis"].loc)
    return axis % rank


def count(t, axis) -> int:
    return t.type.size if axis is None else t.type.shape[axis]


def restore_axis(chk, reduced, like, axis, loc):
    """Broadcast a reduction's result back over the reduced axis (NumPy's keepdims then broadcast)."""
    if axis is None:
        return reduced  # a scalar: elementwise primitives take it as it is
    kept = like.type.shape[:axis] + (1,) + like.type.shape[axis + 1:]
    reshaped = chk.prim("reshape", [reduced], loc, shape=kept)
    return chk.broadcast_to(reshaped, like.type.shape, loc)


def logsumexp(chk, x, axis, loc):
    # The max is shifted out for stability; stop_gradient keeps the derivative exactly softmax. An
    # infinite max is not shifted (inf - inf is NaN): the sum of exps is then inf or 0 and its log the
    # max itself, as in SciPy (logsumexp([inf, 1]) = inf, logsumexp([-inf, -inf]) = -inf).
    top = chk.prim("reduce_max", [x], loc, axis=axis)
    finite = chk.prim("eq", [chk.prim("sub", [top, top], loc), chk.constant(0.0, loc)], loc)
    m = chk.prim("stop_gradient", [chk.prim("select", [finite, top, chk.constant(0.0, loc)], loc)], loc)
    shifted = chk.prim("sub", [x, restore_axis(chk, m, x, axis, loc)], loc)
    total = chk.prim("reduce_sum", [chk.prim("exp", [shifted], loc)], loc, axis=axis)
    return chk.prim("add", [m, chk.prim("log", [total], loc)], loc)


def mean(chk, x, axis, loc):
    """The mean over `axis` (None: every entry) of a float tensor."""
    total = chk.prim("reduce_sum", [x], loc, axis=axis) if x.type.rank else x
    return chk.prim("div", [total, chk.constant(float(count(x, axis)), loc)], loc)
