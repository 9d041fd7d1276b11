"""Builtin functions of the language (LANGUAGE.md section 7), lowered to IR primitives.

One table, `BUILTINS`, maps each name to its argument counts, keywords and lowering. Builtins that
are not primitives (`mean`, `norm`, `logsumexp`, `softmax`, `cross_entropy`, `mse`, `outer`, ...)
are compositions of primitives, so they need no adjoint rules or code generators of their own.

Invariants:
- Every argument count and keyword is checked before lowering; mistakes name the builtin.
- Derivative conventions live in the primitives they lower to (`relu'(0) = 0`, ties of `max`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import SpadcError, did_you_mean
from ..ir import elementwise
from ..syntax import ast
from . import indexing
from .typed import Typed

REDUCTIONS = {"sum": "reduce_sum", "prod": "reduce_prod", "max": "reduce_max", "min": "reduce_min"}
GENERATOR_REDUCTIONS = ("sum", "prod", "mean", "max", "min")


@dataclass(frozen=True)
class Builtin:
    min_args: int
    max_args: int | None  # None: any number
    keywords: tuple[str, ...]
    lower: Callable  # (chk, args: list[Typed], kwargs: dict[str, ast.Expr], node) -> Typed
    since: str = "1.1"  # the language version that added it: a 1.1 program's own fn of a 2.0 name wins


# ---- helpers -------------------------------------------------------------------

def _axis(chk, kwargs, rank: int, name: str, node) -> int | None:
    if "axis" not in kwargs:
        return None
    axis = chk.const_int(kwargs["axis"], f"the `axis` of {name}")
    if not -rank <= axis < rank:
        raise SpadcError(f"axis {axis} is out of range for a tensor of rank {rank}", kwargs["axis"].loc)
    return axis % rank


def _count(t, axis) -> int:
    return t.type.size if axis is None else t.type.shape[axis]


def _restore_axis(chk, reduced, like, axis, loc):
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
    shifted = chk.prim("sub", [x, _restore_axis(chk, m, x, axis, loc)], loc)
    total = chk.prim("reduce_sum", [chk.prim("exp", [shifted], loc)], loc, axis=axis)
    return chk.prim("add", [m, chk.prim("log", [total], loc)], loc)


def _vector_or_matrix(t, what, loc):
    if t.type.rank not in (1, 2):
        raise SpadcError(f"{what} needs vectors or matrices, got {t.type}", loc)


def matmul(chk, a, b, loc, what="`@`"):
    a, b = chk.to_float(a, what, loc), chk.to_float(b, what, loc)
    _vector_or_matrix(a, what, loc)
    _vector_or_matrix(b, what, loc)
    if a.type.shape[-1] != b.type.shape[0]:
        raise SpadcError(f"cannot multiply {a.type} {what} {b.type}: inner dimensions differ "
                         f"({a.type.shape[-1]} vs {b.type.shape[0]})", loc)
    return chk.prim("matmul", [a, b], loc)


def _dims(chk, nodes, name) -> tuple[int, ...]:
    return tuple(chk.const_int(n, f"a dimension of `{name}`", minimum=1) for n in nodes)


# ---- lowerings -----------------------------------------------------------------

def _elementwise(function):
    """A function of spadc/ir/elementwise.py on its operand, an i64 one made float unless it takes i64."""
    name = function.name
    operand = (lambda chk, x, loc: chk.numeric(x, f"`{name}`", loc)) if "i64" in function.dtypes else \
        (lambda chk, x, loc: chk.to_float(x, f"`{name}`", loc))
    return Builtin(1, 1, (), lambda chk, args, kw, node: chk.prim(name, [operand(chk, args[0], node.loc)], node.loc),
                   function.since)


def _reduction(name):
    def lower(chk, args, kw, node):
        if len(args) == 2:  # max(a, b), min(a, b): elementwise
            if kw:
                raise SpadcError(f"`{name}` of two operands is elementwise and takes no `axis`", node.loc)
            a, b = chk.unify_dtypes(chk.numeric(args[0], f"`{name}`", node.loc),
                                    chk.numeric(args[1], f"`{name}`", node.loc), f"`{name}`", node.loc)
            a, b = chk.broadcast_all([a, b], f"`{name}`", node.loc)
            return chk.prim(name, [a, b], node.loc)
        x = chk.numeric(args[0], f"`{name}`", node.loc)
        axis = _axis(chk, kw, x.type.rank, name, node)
        if x.type.rank == 0:
            return x
        return chk.prim(REDUCTIONS[name], [x], node.loc, axis=axis)
    return lower


def _mean(chk, args, kw, node):
    x = chk.to_float(args[0], "`mean`", node.loc)
    axis = _axis(chk, kw, x.type.rank, "mean", node)
    total = chk.prim("reduce_sum", [x], node.loc, axis=axis) if x.type.rank else x
    return chk.prim("div", [total, chk.constant(float(_count(x, axis)), node.loc)], node.loc)


def _norm(chk, args, kw, node):
    x = chk.to_float(args[0], "`norm`", node.loc)
    axis = _axis(chk, kw, x.type.rank, "norm", node)
    squares = chk.prim("mul", [x, x], node.loc)
    total = chk.prim("reduce_sum", [squares], node.loc, axis=axis) if x.type.rank else squares
    return chk.prim("sqrt", [total], node.loc)


def _logsumexp(chk, args, kw, node):
    x = chk.to_float(args[0], "`logsumexp`", node.loc)
    if x.type.rank == 0:
        return x
    return logsumexp(chk, x, _axis(chk, kw, x.type.rank, "logsumexp", node), node.loc)


def _log_softmax_parts(chk, x, node):
    if x.type.rank == 0:
        raise SpadcError("softmax needs at least one axis, got a scalar", node.loc)
    axis = x.type.rank - 1
    return _restore_axis(chk, logsumexp(chk, x, axis, node.loc), x, axis, node.loc)


def _softmax(chk, args, kw, node):
    x = chk.to_float(args[0], "`softmax`", node.loc)
    return chk.prim("exp", [chk.prim("sub", [x, _log_softmax_parts(chk, x, node)], node.loc)], node.loc)


def _log_softmax(chk, args, kw, node):
    x = chk.to_float(args[0], "`log_softmax`", node.loc)
    return chk.prim("sub", [x, _log_softmax_parts(chk, x, node)], node.loc)


def _label(chk, label, name, loc):
    if label.type.dtype != "i64" or label.type.rank != 0:
        raise SpadcError(f"the label of `{name}` must be an i64 scalar, got {label.type}", loc)
    return label


def _cross_entropy(chk, args, kw, node):
    logits = chk.to_float(args[0], "`cross_entropy`", node.loc)
    if logits.type.rank != 1:
        raise SpadcError(f"`cross_entropy` needs a vector of logits, got {logits.type}", node.args[0].loc)
    label = _label(chk, args[1], "cross_entropy", node.args[1].loc)
    picked = indexing.index_value(chk, logits, [label], [node.args[1]], "label", node.args[1].loc)
    result = chk.prim("sub", [logsumexp(chk, logits, None, node.loc), picked], node.loc)
    chk.last_head = ("cross_entropy", logits, result)
    chk.last_label = (logits, label)
    return result


def _mse(chk, args, kw, node):
    a, b = (chk.to_float(x, "`mse`", node.loc) for x in args)
    a, b = chk.broadcast_all([a, b], "`mse`", node.loc)
    d = chk.prim("sub", [a, b], node.loc)
    result = _mean(chk, [chk.prim("mul", [d, d], node.loc)], {}, node)
    chk.last_head = ("mse", d, result)
    chk.last_label = None
    for scores, target in ((a, b), (b, a)):  # mse of scores against onehot(label, n): a classifier
        if target.value.id in chk.onehot_labels and scores.type.rank == 1:
            chk.last_label = (scores, chk.onehot_labels[target.value.id])
    return result


def _dot(chk, args, kw, node):
    return matmul(chk, args[0], args[1], node.loc, "`dot`")


def _outer(chk, args, kw, node):
    a, b = (chk.to_float(x, "`outer`", node.loc) for x in args)
    if a.type.rank != 1 or b.type.rank != 1:
        raise SpadcError(f"`outer` needs two vectors, got {a.type} and {b.type}", node.loc)
    return chk.prim("outer", [a, b], node.loc)


def _transpose(chk, args, kw, node):
    """transpose(x): the axes reversed (a vector as it is); transpose(x, p0, ..., pk): permuted, as NumPy's."""
    x = chk.expr(node.args[0])
    if len(node.args) == 1:
        return chk.prim("transpose", [x], node.loc) if x.type.rank >= 2 else x
    perm = tuple(chk.const_int(a, "an axis of `transpose`") for a in node.args[1:])
    if sorted(a % x.type.rank if -x.type.rank <= a < x.type.rank else a for a in perm) != list(range(x.type.rank)):
        raise SpadcError(f"the axes of `transpose` must be a permutation of 0..{x.type.rank - 1} for {x.type}, got "
                         f"{', '.join(map(str, perm))}", node.loc)
    perm = tuple(a % x.type.rank for a in perm)
    return chk.prim("transpose", [x], node.loc, perm=perm) if perm != tuple(range(x.type.rank)) else x


def _joined(chk, args, kw, node, name):
    """The operands of concat or stack, in one dtype, and the axis (default 0) checked against `rank`."""
    if any(a.type.dtype == "bool" for a in args) and not all(a.type.dtype == "bool" for a in args):
        raise SpadcError(f"`{name}` cannot mix bool with numbers", node.loc)
    if any(a.type.dtype == "f64" for a in args):
        args = [chk.to_float(a, f"`{name}`", node.loc) for a in args]
    return args


def _concat(chk, args, kw, node):
    args = _joined(chk, args, kw, node, "concat")
    first = args[0]
    if first.type.rank == 0:
        raise SpadcError("`concat` joins tensors along an axis; got a scalar (use `stack`)", node.args[0].loc)
    axis = _axis(chk, kw, first.type.rank, "concat", node) or 0
    for a, a_node in zip(args[1:], node.args[1:]):
        if a.type.rank != first.type.rank or any(d != e for k, (d, e) in enumerate(zip(a.type.shape, first.type.shape))
                                                 if k != axis):
            raise SpadcError(f"`concat` along axis {axis} needs the other axes equal: {first.type} and {a.type}",
                             a_node.loc)
    return chk.prim("concat", args, node.loc, axis=axis) if len(args) > 1 else first


def _stack(chk, args, kw, node):
    args = _joined(chk, args, kw, node, "stack")
    first = args[0]
    for a, a_node in zip(args[1:], node.args[1:]):
        if a.type.shape != first.type.shape:
            raise SpadcError(f"`stack` needs operands of one shape: {first.type} and {a.type}", a_node.loc)
    axis = _axis(chk, kw, first.type.rank + 1, "stack", node) or 0
    if axis == 0:
        return chk.prim("stack", args, node.loc)
    shape = first.type.shape[:axis] + (1,) + first.type.shape[axis:]
    return chk.prim("concat", [chk.prim("reshape", [a], node.loc, shape=shape) for a in args], node.loc, axis=axis)


def _onehot(chk, args, kw, node):
    label = _label(chk, args[0], "onehot", node.args[0].loc)
    n = chk.const_int(node.args[1], "the class count of `onehot`", minimum=1)
    result = chk.prim("onehot", [label], node.loc, n=n)
    chk.onehot_labels[result.value.id] = label  # mse(scores, onehot(label, n)) is a classifier's loss
    return result


def _dropout(chk, args, kw, node):
    x = chk.to_float(args[0], "`dropout`", node.loc)
    p = chk.const_float(node.args[1], "the rate of `dropout`")
    if not 0.0 <= p < 1.0:
        raise SpadcError(f"the rate of `dropout` must be in [0, 1), got {p}", node.args[1].loc)
    if p == 0.0:  # every entry kept, scaled by 1 / (1 - 0): the identity, with no draws to make
        return x
    mask = chk.prim("dropout_mask", [], node.loc, p=p, shape=x.type.shape)
    return chk.prim("mul", [x, mask], node.loc)


def _filled(chk, value, dim_nodes, name, node):
    return chk.broadcast_to(value, _dims(chk, dim_nodes, name), node.loc)


def _zeros(chk, args, kw, node):
    return _filled(chk, chk.constant(0.0, node.loc), node.args, "zeros", node)


def _ones(chk, args, kw, node):
    return _filled(chk, chk.constant(1.0, node.loc), node.args, "ones", node)


def _fill(chk, args, kw, node):
    value = chk.numeric(args[0], "`fill`", node.loc)
    if value.type.rank != 0:
        raise SpadcError(f"the value of `fill` must be a scalar, got {value.type}", node.args[0].loc)
    return _filled(chk, value, node.args[1:], "fill", node)


def _eye(chk, args, kw, node):
    n = chk.const_int(node.args[0], "the size of `eye`", minimum=1)
    return chk.prim("eye", [], node.loc, n=n)


def _reshape(chk, args, kw, node):
    """reshape(x, d1, ..., dk); one dimension may be -1, the entries left over (NumPy's)."""
    x = args[0]
    given = tuple(chk.const_int(n, "a dimension of `reshape`") for n in node.args[1:])
    for n, d in zip(node.args[1:], given):
        if d < 1 and d != -1 or given.count(-1) > 1 and d == -1:
            raise SpadcError(f"a dimension of `reshape` must be at least 1, or one of them -1, got {d}", n.loc)
    known = math.prod(d for d in given if d != -1)
    shape = tuple(x.type.size // known if d == -1 else d for d in given)
    size = math.prod(shape)
    if size != x.type.size:
        raise SpadcError(f"`reshape` cannot make {x.type.size} entries into shape "
                         f"[{', '.join(map(str, shape))}] ({size} entries)", node.loc)
    return chk.prim("reshape", [x], node.loc, shape=shape) if shape != x.type.shape else x


def _argmax(chk, args, kw, node):
    x = chk.numeric(args[0], "`argmax`", node.loc)
    axis = _axis(chk, kw, x.type.rank, "argmax", node)
    if x.type.rank == 0:
        return chk.constant(0, node.loc)
    return chk.prim("argmax", [x], node.loc, axis=axis)


def _float(chk, args, kw, node):
    x = args[0]
    return x if x.type.dtype == "f64" else chk.prim("to_float", [x], node.loc)


def _int(chk, args, kw, node):
    x = args[0]
    if x.type.dtype == "i64":
        return x
    if x.type.dtype == "bool":
        x = chk.prim("to_float", [x], node.loc)
    return chk.prim("to_int", [x], node.loc)


def _where(chk, args, kw, node):
    mask, a, b = args
    if mask.type.dtype != "bool":
        raise SpadcError(f"the mask of `where` must be bool, got {mask.type}", node.args[0].loc)
    a, b = chk.unify_dtypes(a, b, "`where`", node.loc)
    return chk.prim("select", chk.broadcast_all([mask, a, b], "`where`", node.loc), node.loc)


def _stop_gradient(chk, args, kw, node):
    x = args[0]
    return chk.prim("stop_gradient", [x], node.loc) if x.type.dtype == "f64" else x


def _atan2(chk, args, kw, node):
    y, x = chk.broadcast_all([chk.to_float(a, "`atan2`", node.loc) for a in args], "`atan2`", node.loc)
    return chk.prim("atan2", [y, x], node.loc)


# ---- activations composed of primitives (LANGUAGE.md section 10; PyTorch's definitions) -------

def _slope(chk, kw, name, default):
    """The constant keyword `a` of elu and leaky_relu."""
    return chk.const_float(kw["a"], f"the `a` of `{name}`") if "a" in kw else default


def _gelu(chk, args, kw, node):
    # The exact form, PyTorch's default: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
    x, loc = chk.to_float(args[0], "`gelu`", node.loc), node.loc
    scaled = chk.prim("mul", [x, chk.constant(1.0 / math.sqrt(2.0), loc)], loc)
    cdf = chk.prim("mul", [chk.constant(0.5, loc), chk.prim("add", [chk.constant(1.0, loc), chk.prim(
        "erf", [scaled], loc)], loc)], loc)
    return chk.prim("mul", [x, cdf], loc)


def _silu(chk, args, kw, node):
    x = chk.to_float(args[0], "`silu`", node.loc)
    return chk.prim("mul", [x, chk.prim("sigmoid", [x], node.loc)], node.loc)


def _negative_part(chk, x, below, node):
    """x where x > 0, else `below` (the derivative at 0 is below's, as PyTorch's)."""
    positive = chk.prim("gt", [x, chk.constant(0.0, node.loc)], node.loc)
    return chk.prim("select", [positive, x, below], node.loc)


def _elu(chk, args, kw, node):
    x = chk.to_float(args[0], "`elu`", node.loc)
    below = chk.prim("mul", [chk.constant(_slope(chk, kw, "elu", 1.0), node.loc), chk.prim("expm1", [x], node.loc)],
                     node.loc)
    return _negative_part(chk, x, below, node)


def _leaky_relu(chk, args, kw, node):
    x = chk.to_float(args[0], "`leaky_relu`", node.loc)
    below = chk.prim("mul", [chk.constant(_slope(chk, kw, "leaky_relu", 0.01), node.loc), x], node.loc)
    return _negative_part(chk, x, below, node)


def _clip(chk, args, kw, node):
    """torch.clamp, min(max(x, lo), hi): NaN kept; the derivative is 1 for x where lo <= x <= hi, and
    goes to the bound where it is taken; with lo > hi every entry is hi, as in PyTorch."""
    x, lo, hi = chk.broadcast_all([chk.to_float(a, "`clip`", node.loc) for a in args], "`clip`", node.loc)
    raised = chk.prim("select", [chk.prim("lt", [x, lo], node.loc), lo, x], node.loc)
    return chk.prim("select", [chk.prim("gt", [raised, hi], node.loc), hi, raised], node.loc)


# ---- statistics, losses and matrices composed of primitives (LANGUAGE.md section 10) ----------

def _variance(chk, x, axis, loc):
    """NumPy's var (ddof=0): the mean square deviation from the mean, over `axis` or everything."""
    total = chk.prim("reduce_sum", [x], loc, axis=axis)
    mean = chk.prim("div", [total, chk.constant(float(_count(x, axis)), loc)], loc)
    deviation = chk.prim("sub", [x, _restore_axis(chk, mean, x, axis, loc)], loc)
    squares = chk.prim("reduce_sum", [chk.prim("mul", [deviation, deviation], loc)], loc, axis=axis)
    return chk.prim("div", [squares, chk.constant(float(_count(x, axis)), loc)], loc)


def _var(chk, args, kw, node):
    x = chk.to_float(args[0], "`var`", node.loc)
    if x.type.rank == 0:
        return chk.constant(0.0, node.loc)
    return _variance(chk, x, _axis(chk, kw, x.type.rank, "var", node), node.loc)


def _std(chk, args, kw, node):
    return chk.prim("sqrt", [_var(chk, args, kw, node)], node.loc)


def _bce(chk, args, kw, node):
    """Binary cross-entropy on logits, averaged (PyTorch's binary_cross_entropy_with_logits):
    softplus(z) - z t, stable for any z, with derivative sigmoid(z) - t everywhere."""
    z, t = chk.broadcast_all([chk.to_float(a, "`bce`", node.loc) for a in args], "`bce`", node.loc)
    losses = chk.prim("sub", [chk.prim("softplus", [z], node.loc), chk.prim("mul", [z, t], node.loc)], node.loc)
    return _mean(chk, [losses], {}, node)


def _huber(chk, args, kw, node):
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
    return _mean(chk, [chk.prim("select", [near, inside, outside], node.loc)], {}, node)


def _square_matrix(chk, x, name, loc):
    x = chk.to_float(x, f"`{name}`", loc)
    if x.type.rank != 2 or x.type.shape[0] != x.type.shape[1]:
        raise SpadcError(f"`{name}` needs a square matrix, got {x.type}", loc)
    return x


def _diagonal(chk, x, loc):
    entries = [chk.prim("index", [x], loc, spec=(("const", i), ("const", i)), what="the matrix")
               for i in range(x.type.shape[0])]
    return chk.prim("stack", entries, loc)


def _diag(chk, args, kw, node):
    """A vector's diagonal matrix, or a square matrix's diagonal (NumPy's diag)."""
    x = chk.to_float(args[0], "`diag`", node.loc)
    if x.type.rank == 1:
        n = x.type.shape[0]
        column = chk.broadcast_to(chk.prim("reshape", [x], node.loc, shape=(n, 1)), (n, n), node.loc)
        return chk.prim("mul", [chk.prim("eye", [], node.loc, n=n), column], node.loc)
    return _diagonal(chk, _square_matrix(chk, x, "diag", node.loc), node.loc)


def _trace(chk, args, kw, node):
    x = _square_matrix(chk, args[0], "trace", node.loc)
    return chk.prim("reduce_sum", [_diagonal(chk, x, node.loc)], node.loc, axis=None)


def _triangle(name, keep):
    """tril and triu (NumPy's): the entries on and below (above) diagonal k, zeros elsewhere."""
    def lower(chk, args, kw, node):
        x = _square_matrix(chk, args[0], name, node.loc)
        if len(node.args) == 2 and "k" in kw:
            raise SpadcError(f"the offset of `{name}` is given twice", node.loc)
        offset_node = node.args[1] if len(node.args) == 2 else kw.get("k")
        k = 0 if offset_node is None else chk.const_int(offset_node, f"the offset of `{name}`")
        n = x.type.shape[0]
        rows, columns = np.indices((n, n))
        mask = chk.constant(keep(columns - rows, k), node.loc)
        return chk.prim("select", [mask, x, chk.constant(0.0, node.loc)], node.loc)
    return lower


# Arguments that must be compile-time constants are read from the AST by the lowering itself, so
# they are listed here as "lazy": they are not elaborated as run-time values first.
_LAZY_TAIL = {"onehot": 1, "dropout": 1, "zeros": 0, "ones": 0, "fill": 1, "eye": 0, "reshape": 1, "tril": 1, "transpose": 0,
              "triu": 1}

BUILTINS: dict[str, Builtin] = {
    **{function.name: _elementwise(function) for function in elementwise.UNARY},
    "sum": Builtin(1, 1, ("axis",), _reduction("sum")),
    "prod": Builtin(1, 1, ("axis",), _reduction("prod")),
    "max": Builtin(1, 2, ("axis",), _reduction("max")),
    "min": Builtin(1, 2, ("axis",), _reduction("min")),
    "mean": Builtin(1, 1, ("axis",), _mean),
    "norm": Builtin(1, 1, ("axis",), _norm),
    "logsumexp": Builtin(1, 1, ("axis",), _logsumexp),
    "dot": Builtin(2, 2, (), _dot),
    "outer": Builtin(2, 2, (), _outer),
    "transpose": Builtin(1, None, (), _transpose),
    "softmax": Builtin(1, 1, (), _softmax),
    "log_softmax": Builtin(1, 1, (), _log_softmax),
    "cross_entropy": Builtin(2, 2, (), _cross_entropy),
    "mse": Builtin(2, 2, (), _mse),
    "onehot": Builtin(2, 2, (), _onehot),
    "dropout": Builtin(2, 2, (), _dropout),
    "zeros": Builtin(1, None, (), _zeros),
    "ones": Builtin(1, None, (), _ones),
    "fill": Builtin(2, None, (), _fill),
    "eye": Builtin(1, 1, (), _eye),
    "stop_gradient": Builtin(1, 1, (), _stop_gradient),
    "float": Builtin(1, 1, (), _float),
    "int": Builtin(1, 1, (), _int),
    "where": Builtin(3, 3, (), _where),
    "reshape": Builtin(2, None, (), _reshape),
    "argmax": Builtin(1, 1, ("axis",), _argmax),
    "atan2": Builtin(2, 2, (), _atan2, "2.0"),
    "concat": Builtin(1, None, ("axis",), _concat, "2.0"),
    "stack": Builtin(1, None, ("axis",), _stack, "2.0"),
    "gelu": Builtin(1, 1, (), _gelu, "2.0"),
    "silu": Builtin(1, 1, (), _silu, "2.0"),
    "elu": Builtin(1, 1, ("a",), _elu, "2.0"),
    "leaky_relu": Builtin(1, 1, ("a",), _leaky_relu, "2.0"),
    "clip": Builtin(3, 3, (), _clip, "2.0"),
    "var": Builtin(1, 1, ("axis",), _var, "2.0"),
    "std": Builtin(1, 1, ("axis",), _std, "2.0"),
    "bce": Builtin(2, 2, (), _bce, "2.0"),
    "huber": Builtin(2, 2, ("delta",), _huber, "2.0"),
    "diag": Builtin(1, 1, (), _diag, "2.0"),
    "trace": Builtin(1, 1, (), _trace, "2.0"),
    "tril": Builtin(1, 2, ("k",), _triangle("tril", lambda above, k: above <= k), "2.0"),
    "triu": Builtin(1, 2, ("k",), _triangle("triu", lambda above, k: above >= k), "2.0"),
}


# Builtins added in version 2.0: a program written for 1.1 may define a fn of one of these names,
# which keeps its meaning there (a program's own fn is called before a builtin of its name).
REDEFINABLE = frozenset(name for name, builtin in BUILTINS.items() if builtin.since != "1.1")


def _arity_text(b: Builtin) -> str:
    if b.max_args == b.min_args:
        return f"{b.min_args} argument{'s' if b.min_args != 1 else ''}"
    if b.max_args is None:
        return f"at least {b.min_args} argument{'s' if b.min_args != 1 else ''}"
    return f"{b.min_args} to {b.max_args} arguments"


def check_arguments(name: str, builtin: Builtin, node) -> dict:
    count = len(node.args)
    if count < builtin.min_args or (builtin.max_args is not None and count > builtin.max_args):
        raise SpadcError(f"`{name}` takes {_arity_text(builtin)}, got {count}", node.loc)
    kwargs = {}
    for keyword in node.kwargs:
        if keyword.name not in builtin.keywords:
            allowed = ", ".join(f"`{k}`" for k in builtin.keywords) or "no keywords"
            raise SpadcError(f"`{name}` has no keyword `{keyword.name}` (it takes {allowed})", keyword.loc)
        if keyword.name in kwargs:
            raise SpadcError(f"keyword `{keyword.name}` given twice", keyword.loc)
        kwargs[keyword.name] = keyword.value
    return kwargs


def call_builtin(chk, node: ast.Call):
    builtin = BUILTINS.get(node.name)
    if builtin is None:
        known = list(BUILTINS) + list(chk.env.fns)
        raise SpadcError(f"undefined function `{node.name}`{did_you_mean(node.name, known)}", node.loc)
    kwargs = check_arguments(node.name, builtin, node)
    eager = node.args[:_LAZY_TAIL.get(node.name, len(node.args))]
    args = [chk.expr(a) for a in eager]
    return builtin.lower(chk, args, kwargs, node)


def reduce_generator(chk, node: ast.GenCall):
    """`sum(body for i in a..b)`: tabulate the body, then reduce over the new leading axis."""
    if node.name not in GENERATOR_REDUCTIONS:
        if node.name in BUILTINS or node.name in chk.env.fns:
            raise SpadcError(f"`{node.name}` does not take a generator; only "
                             f"{', '.join(GENERATOR_REDUCTIONS)} do", node.loc)
        raise SpadcError(f"undefined function `{node.name}`", node.loc)
    block, body = chk.tabulate(node.var, node.var_loc, node.range, node.body)
    lo, hi = chk.range_bounds(node.range)
    body = chk.numeric(body, f"`{node.name}`", node.loc)
    stacked_type = body.type.with_shape((hi - lo,) + body.type.shape)
    (stacked,) = chk.b.region_op("tabulate", [], (block,), [stacked_type], node.loc, lo=lo, hi=hi, var=node.var)
    stacked = Typed(stacked)
    if node.name == "mean":
        stacked = chk.to_float(stacked, "`mean`", node.loc)
        total = chk.prim("reduce_sum", [stacked], node.loc, axis=0)
        return chk.prim("div", [total, chk.constant(float(hi - lo), node.loc)], node.loc)
    return chk.prim(REDUCTIONS[node.name], [stacked], node.loc, axis=0)

