"""Builtin functions of the language (LANGUAGE.md sections 7 and 10), lowered to IR primitives.

One table, `BUILTINS`, maps each name to its argument counts, keywords, lowering and the language
version that added it; the lowerings of the tensor-arranging builtins are in tensor_builtins.py,
those of the network and statistics builtins of 2.0 in nn_builtins.py. Builtins that
are not primitives (`mean`, `norm`, `logsumexp`, `softmax`, `cross_entropy`, `mse`, `outer`, ...)
are compositions of primitives, so they need no adjoint rules or code generators of their own.

Invariants:
- Every argument count and keyword is checked before lowering; mistakes name the builtin.
- Derivative conventions live in the primitives they lower to (`relu'(0) = 0`, ties of `max`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import SpadcError, did_you_mean
from ..ir import elementwise
from ..syntax import ast
from . import axes, conv_builtins, indexing, nn_builtins, tensor_builtins
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

def _vector_or_matrix(t, what, loc):
    if t.type.rank not in (1, 2):
        raise SpadcError(f"{what} needs vectors or matrices, got {t.type}", loc)


def matmul(chk, a, b, loc, what="`@`"):
    a, b = chk.to_float(a, what, loc), chk.to_float(b, what, loc)
    if max(a.type.rank, b.type.rank) >= 3 and what == "`@`":
        return tensor_builtins.batched_matmul(chk, a, b, loc)
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
        axis = axes.axis_keyword(chk, kw, x.type.rank, name, node)
        if x.type.rank == 0:
            return x
        return chk.prim(REDUCTIONS[name], [x], node.loc, axis=axis)
    return lower


def _mean(chk, args, kw, node):
    x = chk.to_float(args[0], "`mean`", node.loc)
    return axes.mean(chk, x, axes.axis_keyword(chk, kw, x.type.rank, "mean", node), node.loc)


def _norm(chk, args, kw, node):
    x = chk.to_float(args[0], "`norm`", node.loc)
    axis = axes.axis_keyword(chk, kw, x.type.rank, "norm", node)
    squares = chk.prim("mul", [x, x], node.loc)
    total = chk.prim("reduce_sum", [squares], node.loc, axis=axis) if x.type.rank else squares
    return chk.prim("sqrt", [total], node.loc)


def _logsumexp(chk, args, kw, node):
    x = chk.to_float(args[0], "`logsumexp`", node.loc)
    if x.type.rank == 0:
        return x
    return axes.logsumexp(chk, x, axes.axis_keyword(chk, kw, x.type.rank, "logsumexp", node), node.loc)


def _log_softmax_parts(chk, x, node):
    if x.type.rank == 0:
        raise SpadcError("softmax needs at least one axis, got a scalar", node.loc)
    axis = x.type.rank - 1
    return axes.restore_axis(chk, axes.logsumexp(chk, x, axis, node.loc), x, axis, node.loc)


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
    result = chk.prim("sub", [axes.logsumexp(chk, logits, None, node.loc), picked], node.loc)
    chk.last_head = ("cross_entropy", logits, result)
    chk.last_label = (logits, label)
    return result


def _mse(chk, args, kw, node):
    a, b = (chk.to_float(x, "`mse`", node.loc) for x in args)
    a, b = chk.broadcast_all([a, b], "`mse`", node.loc)
    d = chk.prim("sub", [a, b], node.loc)
    result = axes.mean(chk, chk.prim("mul", [d, d], node.loc), None, node.loc)
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


def _argmax(chk, args, kw, node):
    x = chk.numeric(args[0], "`argmax`", node.loc)
    axis = axes.axis_keyword(chk, kw, x.type.rank, "argmax", node)
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


# Arguments that must be compile-time constants are read from the AST by the lowering itself, so
# they are listed here as "lazy": they are not elaborated as run-time values first.
_LAZY_TAIL = {"onehot": 1, "dropout": 1, "zeros": 0, "ones": 0, "fill": 1, "eye": 0, "reshape": 1, "tril": 1, "transpose": 0,
              "triu": 1, "max_pool": 1, "avg_pool": 1, "pad": 1, "upsample": 1}

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
    "transpose": Builtin(1, None, (), tensor_builtins.transpose),
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
    "reshape": Builtin(2, None, (), tensor_builtins.reshape),
    "argmax": Builtin(1, 1, ("axis",), _argmax),
    "atan2": Builtin(2, 2, (), nn_builtins.atan2, "2.0"),
    "digamma": Builtin(1, 1, (), nn_builtins.digamma, "2.0"),
    "concat": Builtin(1, None, ("axis",), tensor_builtins.concat, "2.0"),
    "cumsum": Builtin(1, 1, ("axis",), tensor_builtins.cumsum, "2.0"),
    "stack": Builtin(1, None, ("axis",), tensor_builtins.stack, "2.0"),
    "gelu": Builtin(1, 1, (), nn_builtins.gelu, "2.0"),
    "silu": Builtin(1, 1, (), nn_builtins.silu, "2.0"),
    "elu": Builtin(1, 1, ("a",), nn_builtins.elu, "2.0"),
    "leaky_relu": Builtin(1, 1, ("a",), nn_builtins.leaky_relu, "2.0"),
    "clip": Builtin(3, 3, (), nn_builtins.clip, "2.0"),
    "var": Builtin(1, 1, ("axis",), nn_builtins.var, "2.0"),
    "std": Builtin(1, 1, ("axis",), nn_builtins.std, "2.0"),
    "bce": Builtin(2, 2, (), nn_builtins.bce, "2.0"),
    "huber": Builtin(2, 2, ("delta",), nn_builtins.huber, "2.0"),
    "diag": Builtin(1, 1, (), tensor_builtins.diag, "2.0"),
    "trace": Builtin(1, 1, (), tensor_builtins.trace, "2.0"),
    "tril": Builtin(1, 2, ("k",), tensor_builtins.triangle("tril", upper=False), "2.0"),
    "triu": Builtin(1, 2, ("k",), tensor_builtins.triangle("triu", upper=True), "2.0"),
    "solve": Builtin(2, 2, (), tensor_builtins.solve, "2.0"),
    "cholesky": Builtin(1, 1, (), tensor_builtins.cholesky, "2.0"),
    "logdet": Builtin(1, 1, (), tensor_builtins.logdet, "2.0"),
    "conv": Builtin(2, 2, ("stride", "padding", "dilation", "groups"), conv_builtins.conv, "2.0"),
    "max_pool": Builtin(2, 2, ("stride", "padding"), conv_builtins.max_pool, "2.0"),
    "avg_pool": Builtin(2, 2, ("stride", "padding"), conv_builtins.avg_pool, "2.0"),
    "pad": Builtin(2, 2, (), conv_builtins.pad, "2.0"),
    "upsample": Builtin(2, 2, (), conv_builtins.upsample, "2.0"),
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

