"""Builtins that arrange tensors (LANGUAGE.md sections 7 and 10): `transpose` with a permutation,
`concat`, `stack` along any axis, `reshape` with -1, and the square-matrix ones `diag`, `trace`,
`tril`, `triu`, `solve`, `cholesky`, `logdet`, all lowered to primitives (the linear algebra ones to
those of spadc/ir/linalg.py).

Invariants: axes and compile-time arguments are checked here, each mistake a located SpadcError;
the primitives they emit take only shapes that their shape rules accept.
"""

from __future__ import annotations

import math


from ..errors import SpadcError
from ..ir.types import TensorType, broadcast_shapes
from . import axes
from .typed import Typed


def transpose(chk, args, kw, node):
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


def joined(chk, args, node, name):
    """The operands of concat or stack in one dtype (i64 with f64 becomes f64; bool only with bool)."""
    if any(a.type.dtype == "bool" for a in args) and not all(a.type.dtype == "bool" for a in args):
        raise SpadcError(f"`{name}` cannot mix bool with numbers", node.loc)
    if any(a.type.dtype == "f64" for a in args):
        args = [chk.to_float(a, f"`{name}`", node.loc) for a in args]
    return args


def concat(chk, args, kw, node):
    args = joined(chk, args, node, "concat")
    first = args[0]
    if first.type.rank == 0:
        raise SpadcError("`concat` joins tensors along an axis; got a scalar (use `stack`)", node.args[0].loc)
    axis = axes.axis_keyword(chk, kw, first.type.rank, "concat", node) or 0
    for a, a_node in zip(args[1:], node.args[1:]):
        if a.type.rank != first.type.rank or any(d != e for k, (d, e) in enumerate(zip(a.type.shape, first.type.shape))
                                                 if k != axis):
            raise SpadcError(f"`concat` along axis {axis} needs the other axes equal: {first.type} and {a.type}",
                             a_node.loc)
    return chk.prim("concat", args, node.loc, axis=axis) if len(args) > 1 else first


def stack(chk, args, kw, node):
    args = joined(chk, args, node, "stack")
    first = args[0]
    for a, a_node in zip(args[1:], node.args[1:]):
        if a.type.shape != first.type.shape:
            raise SpadcError(f"`stack` needs operands of one shape: {first.type} and {a.type}", a_node.loc)
    axis = axes.axis_keyword(chk, kw, first.type.rank + 1, "stack", node) or 0
    if axis == 0:
        return chk.prim("stack", args, node.loc)
    shape = first.type.shape[:axis] + (1,) + first.type.shape[axis:]
    return chk.prim("concat", [chk.prim("reshape", [a], node.loc, shape=shape) for a in args], node.loc, axis=axis)


def reshape(chk, args, kw, node):
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


def square_matrix(chk, x, name, loc):
    x = chk.to_float(x, f"`{name}`", loc)
    if x.type.rank != 2 or x.type.shape[0] != x.type.shape[1]:
        raise SpadcError(f"`{name}` needs a square matrix, got {x.type}", loc)
    return x


def diagonal(chk, x, loc):
    entries = [chk.prim("index", [x], loc, spec=(("const", i), ("const", i)), what="the matrix")
               for i in range(x.type.shape[0])]
    return chk.prim("stack", entries, loc)


def diag(chk, args, kw, node):
    """A vector's diagonal matrix, or a square matrix's diagonal (NumPy's diag)."""
    x = chk.to_float(args[0], "`diag`", node.loc)
    if x.type.rank == 1:
        n = x.type.shape[0]
        column = chk.broadcast_to(chk.prim("reshape", [x], node.loc, shape=(n, 1)), (n, n), node.loc)
        return chk.prim("mul", [chk.prim("eye", [], node.loc, n=n), column], node.loc)
    return diagonal(chk, square_matrix(chk, x, "diag", node.loc), node.loc)


def trace(chk, args, kw, node):
    x = square_matrix(chk, args[0], "trace", node.loc)
    return chk.prim("reduce_sum", [diagonal(chk, x, node.loc)], node.loc, axis=None)


def triangle(name, upper):
    """tril and triu (NumPy's): the entries on and below (above) diagonal k, zeros elsewhere."""
    def lower(chk, args, kw, node):
        x = square_matrix(chk, args[0], name, node.loc)
        if len(node.args) == 2 and "k" in kw:
            raise SpadcError(f"the offset of `{name}` is given twice", node.loc)
        offset_node = node.args[1] if len(node.args) == 2 else kw.get("k")
        k = 0 if offset_node is None else chk.const_int(offset_node, f"the offset of `{name}`")
        return chk.prim("triangle", [x], node.loc, k=k, upper=upper)
    return lower


def solve(chk, args, kw, node):
    """A^-1 b, b a vector or a matrix of right-hand sides (NumPy's solve)."""
    a = square_matrix(chk, args[0], "solve", node.loc)
    b = chk.to_float(args[1], "`solve`", node.loc)
    n = a.type.shape[0]
    if b.type.rank not in (1, 2) or b.type.shape[0] != n:
        raise SpadcError(f"`solve(A, b)` with A of {a.type} needs b of {n} rows (a vector or a matrix), "
                         f"got {b.type}", node.loc)
    return chk.prim("solve", [a, b], node.loc)


def _factor_of_symmetric_part(chk, x, name, loc):
    """The lower Cholesky factor of (A + A^T) / 2: JAX's choice, so that the gradient is symmetric
    (spadc/ir/linalg.py)."""
    a = square_matrix(chk, x, name, loc)
    both = chk.prim("add", [a, chk.prim("transpose", [a], loc)], loc)
    return chk.prim("cholesky", [chk.prim("mul", [chk.constant(0.5, loc), both], loc)], loc)


def cholesky(chk, args, kw, node):
    return _factor_of_symmetric_part(chk, args[0], "cholesky", node.loc)


def logdet(chk, args, kw, node):
    """log det A of a symmetric positive definite A: twice the sum of the logs of its Cholesky
    factor's diagonal (a matrix that is not positive definite is the factor's run-time error)."""
    factor = _factor_of_symmetric_part(chk, args[0], "logdet", node.loc)
    logs = chk.prim("log", [diagonal(chk, factor, node.loc)], node.loc)
    total = chk.prim("reduce_sum", [logs], node.loc, axis=None)
    return chk.prim("mul", [chk.constant(2.0, node.loc), total], node.loc)


def batched_matmul(chk, a, b, loc):
    """`a @ b` with an operand of rank 3 or more: NumPy's matmul, the leading axes broadcast (a vector
    operand gains an axis of 1 that the result drops). With a matrix on the right it is one matrix
    product over all rows; otherwise a comprehension of matrix products over the leading axes."""
    if a.type.rank == 0 or b.type.rank == 0:
        raise SpadcError(f"`@` needs tensors of rank 1 or more, got {a.type} and {b.type}", loc)
    a_vector, b_vector = a.type.rank == 1, b.type.rank == 1
    if a_vector:
        a = chk.prim("reshape", [a], loc, shape=(1,) + a.type.shape)
    if b_vector:
        b = chk.prim("reshape", [b], loc, shape=b.type.shape + (1,))
    (m, k), (k2, n) = a.type.shape[-2:], b.type.shape[-2:]
    if k != k2:
        raise SpadcError(f"cannot multiply {a.type} `@` {b.type}: inner dimensions differ ({k} vs {k2})", loc)
    lead = broadcast_shapes(a.type.shape[:-2], b.type.shape[:-2])
    if lead is None:
        raise SpadcError(f"the leading axes of {a.type} and {b.type} do not broadcast in `@`", loc)
    rows = math.prod(lead)
    if b.type.rank == 2:  # weights on the right: one product of all rows
        flat = chk.prim("reshape", [a], loc, shape=(rows * m, k))
        product = chk.prim("matmul", [flat, b], loc)
    else:
        a = chk.broadcast_to(a, lead + (m, k), loc)
        b = chk.broadcast_to(b, lead + (k, n), loc)
        a = chk.prim("reshape", [a], loc, shape=(rows, m, k))
        b = chk.prim("reshape", [b], loc, shape=(rows, k, n))
        index = chk.loop_variable("batch", 0, rows)
        with chk.b.region([index.value]) as block:
            pick = (("dyn", False), ("slice", 0, m), ("slice", 0, k))
            left = chk.prim("index", [a, index], loc, spec=pick, what="the left operand of `@`")
            right = chk.prim("index", [b, index], loc, spec=(("dyn", False), ("slice", 0, k), ("slice", 0, n)),
                             what="the right operand of `@`")
            block.yields = [chk.prim("matmul", [left, right], loc).value]
        (product,) = chk.b.region_op("tabulate", [], (block,), [TensorType("f64", (rows, m, n))], loc, lo=0, hi=rows,
                                     var="batch")
        product = Typed(product)
    shape = lead + ((m,) if not a_vector else ()) + ((n,) if not b_vector else ())
    return chk.prim("reshape", [product], loc, shape=shape)


def cumsum(chk, args, kw, node):
    """NumPy's cumsum; `axis` required for a tensor of rank 2 or more (NumPy would flatten it first)."""
    x = chk.numeric(args[0], "`cumsum`", node.loc)
    if x.type.rank == 0:
        raise SpadcError(f"`cumsum` needs a tensor, got {x.type}", node.loc)
    axis = axes.axis_keyword(chk, kw, x.type.rank, "cumsum", node)
    if axis is None and x.type.rank > 1:
        raise SpadcError(f"`cumsum` of {x.type} needs an `axis` (NumPy would flatten it first; write "
                         f"`cumsum(reshape(x, -1))` for that)", node.loc)
    return chk.prim("cumsum", [x], node.loc, axis=axis or 0)
