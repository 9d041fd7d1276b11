"""Linear algebra on square matrices: one `OpRecord` (spadc/ir/record.py) per primitive, holding
everything but the LLVM code, which is in spadc/backend/linalg.py.

- `solve(A, B)`: A^-1 B by LU with partial pivoting (the first largest |entry| of a column is its
  pivot, as LAPACK's getrf); B a vector or a matrix of right-hand sides. A column without a nonzero
  pivot is a run-time error.
- `cholesky(S)`: the lower factor L with L L^T = S, from S's lower triangle only (LAPACK's potrf):
  a pivot that is not positive (or NaN) is a run-time error. Its adjoint and tangent are those of a
  function of the lower triangle: the builtin `cholesky(A)` factors (A + A^T) / 2, as JAX does, so
  its gradient is the symmetric one and agrees with central differences in every entry.
- `trisolve(L, B)`: L^-1 B (or L^-T B with `transpose`) by substitution, from L's lower triangle
  only; the adjoints' and tangents' workhorse, not a builtin.
- `triangle(X)`: NumPy's tril (or triu with `upper`) with offset `k`.

Invariants: every rule reads the lower triangle only where its primitive does, and the adjoint of
a primitive that reads a triangle is zero outside it (a dot-product test holds entry by entry).
The formulas are Murray's (2016) for Cholesky and the textbook ones for solves.
"""

from __future__ import annotations

import math
import numpy as np

from .record import OpRecord, add_all, require
from .types import Fault, TensorType

SINGULAR = "`solve`: the matrix is singular (no nonzero pivot in column {value})"
NOT_POSITIVE_DEFINITE = "`cholesky`: the matrix is not positive definite (its pivot {value} is not positive)"


def _square(t: TensorType, name: str) -> int:
    require(t.dtype == "f64" and t.rank == 2 and t.shape[0] == t.shape[1], f"{name} of {t}")
    return t.shape[0]


def _right_hand_side(types, name):
    a, b = types
    n = _square(a, name)
    require(b.dtype == "f64" and b.rank in (1, 2) and b.shape[0] == n, f"{name} of {a} and {b}")
    return b


# ---- NumPy references: the algorithms the emitters run, in the same order ----------------------

def _pivot_row(column: np.ndarray) -> int:
    """The first largest |entry|, as the emitted scan `if |v| > best` finds it (NaN never wins; a NaN
    first entry is kept)."""
    magnitude = np.abs(column)
    if np.isnan(magnitude[0]):
        return 0
    return int(np.argmax(np.where(np.isnan(magnitude), -np.inf, magnitude)))


def _solve(args, attrs):
    a, b = args
    n = a.shape[0]
    work = np.concatenate([a, b.reshape(n, -1)], axis=1).astype(np.float64)
    for k in range(n):
        p = k + _pivot_row(work[k:, k])
        if work[p, k] == 0:
            raise Fault(SINGULAR.format(value=k))
        work[[k, p]] = work[[p, k]]
        factors = work[k + 1:, k] / work[k, k]
        work[k + 1:, k + 1:] -= np.outer(factors, work[k, k + 1:])
    x = np.zeros((n, work.shape[1] - n))
    for i in reversed(range(n)):
        x[i] = (work[i, n:] - work[i, i + 1:n] @ x[i + 1:]) / work[i, i]
    return x.reshape(b.shape)


def _cholesky(args, attrs):
    (s,) = args
    n = s.shape[0]
    factor = np.zeros((n, n))
    for j in range(n):
        pivot = s[j, j] - factor[j, :j] @ factor[j, :j]
        if not pivot > 0:
            raise Fault(NOT_POSITIVE_DEFINITE.format(value=j))
        factor[j, j] = math.sqrt(pivot)
        factor[j + 1:, j] = (s[j + 1:, j] - factor[j + 1:, :j] @ factor[j, :j]) / factor[j, j]
    return factor


def _trisolve(args, attrs):
    lower, b = args
    n = lower.shape[0]
    rhs, x = b.reshape(n, -1), np.zeros((n, b.size // n))
    if attrs["transpose"]:  # L^T x = b: upper triangular, from the last row up
        for i in reversed(range(n)):
            x[i] = (rhs[i] - lower[i + 1:, i] @ x[i + 1:]) / lower[i, i]
    else:
        for i in range(n):
            x[i] = (rhs[i] - lower[i, :i] @ x[:i]) / lower[i, i]
    return x.reshape(b.shape)


def _triangle(args, attrs):
    return (np.triu if attrs["upper"] else np.tril)(args[0], attrs["k"])


# ---- derivatives, in IR ------------------------------------------------------------------------

def _times_transpose(b, u, v):
    """u v^T: an outer product for vectors, u @ v^T for matrices."""
    return b.op("outer", u, v) if u.type.rank == 1 else b.op("matmul", u, b.op("transpose", v))


def _lower_half_diagonal(b, x):
    """Phi(x): the lower triangle with its diagonal halved (self-adjoint: a fixed weight per entry)."""
    diagonal = b.op("mul", x, b.op("eye", n=x.type.shape[0]))
    return b.op("sub", b.op("triangle", x, k=0, upper=False), b.op("mul", b.const(0.5), diagonal))


def _left_solve(b, lower, x, transpose):
    return b.op("trisolve", lower, x, transpose=transpose)


def _right_solve(b, x, lower, transpose):
    """x L^-1 (x L^-T with `transpose`), as (L^-T x^T)^T."""
    return b.op("transpose", b.op("trisolve", lower, b.op("transpose", x), transpose=not transpose))


def _solve_adjoint(c, op, g, wanted, P):
    a, x = P.arg(0), P.out()
    g_b = c.op("solve", c.op("transpose", a), g)
    return [c.op("neg", _times_transpose(c, g_b, x)) if wanted[0] else None, g_b if wanted[1] else None]


def _solve_tangent(t, op, d):
    a, x = op.args[0], op.result
    rhs = add_all(t, [d[1], t.op("neg", t.op("matmul", d[0], x)) if d[0] is not None else None])
    return t.op("solve", a, rhs)


def _cholesky_adjoint(c, op, g, wanted, P):
    # M = L^-T Phi(L^T g) L^-1 is the gradient for a full S; read from S's lower triangle, each
    # entry below the diagonal stands for two of S: Phi(M + M^T).
    lower = P.out()
    inner = _lower_half_diagonal(c, c.op("matmul", c.op("transpose", lower), g))
    m = _right_solve(c, _left_solve(c, lower, inner, True), lower, False)
    return [_lower_half_diagonal(c, c.op("add", m, c.op("transpose", m)))]


def _cholesky_tangent(t, op, d):
    # dL = L Phi(L^-1 dS L^-T), dS the symmetric matrix of the lower triangle's tangent.
    lower = op.result
    symmetric = t.op("add", t.op("triangle", d[0], k=0, upper=False),
                     t.op("transpose", t.op("triangle", d[0], k=-1, upper=False)))
    inner = _right_solve(t, _left_solve(t, lower, symmetric, False), lower, True)
    return t.op("matmul", lower, _lower_half_diagonal(t, inner))


def _trisolve_adjoint(c, op, g, wanted, P):
    lower, x, transpose = P.arg(0), P.out(), op.attrs["transpose"]
    g_b = _left_solve(c, lower, g, not transpose)
    g_lower = None
    if wanted[0]:
        product = _times_transpose(c, x, g_b) if transpose else _times_transpose(c, g_b, x)
        g_lower = c.op("neg", c.op("triangle", product, k=0, upper=False))
    return [g_lower, g_b if wanted[1] else None]


def _trisolve_tangent(t, op, d):
    lower, x, transpose = op.args[0], op.result, op.attrs["transpose"]
    terms = [d[1]]
    if d[0] is not None:
        d_lower = t.op("triangle", d[0], k=0, upper=False)
        terms.append(t.op("neg", t.op("matmul", t.op("transpose", d_lower) if transpose else d_lower, x)))
    return _left_solve(t, lower, add_all(t, terms), transpose)


def _triangle_adjoint(c, op, g, wanted, P):
    return [c.op("triangle", g, **op.attrs)]


def _triangle_tangent(t, op, d):
    return t.op("triangle", d[0], **op.attrs) if d[0] is not None else None


def _cholesky_infer(types, attrs):
    _square(types[0], "cholesky")
    return types[0]


def _triangle_infer(types, attrs):
    (t,) = types
    _square(t, "triangle")
    require(isinstance(attrs["k"], int) and isinstance(attrs["upper"], bool), f"triangle attrs {attrs}")
    return t


MATRIX_OPS: tuple[OpRecord, ...] = (
    OpRecord("solve", 2, lambda types, attrs: _right_hand_side(types, "solve"), _solve, (0, "out"),
             _solve_adjoint, _solve_tangent,
             "A^-1 B by LU with partial pivoting; B a vector or a matrix; a zero pivot is a run-time error", "linalg"),
    OpRecord("cholesky", 1, _cholesky_infer, _cholesky,
             ("out",), _cholesky_adjoint, _cholesky_tangent,
             "the lower Cholesky factor of the matrix whose lower triangle is the operand's; a pivot that is "
             "not positive is a run-time error", "linalg"),
    OpRecord("trisolve", 2, lambda types, attrs: _right_hand_side(types, "trisolve"), _trisolve, (0, "out"),
             _trisolve_adjoint, _trisolve_tangent,
             "L^-1 B (L^-T B with `transpose`) by substitution, from L's lower triangle. attrs: transpose", "linalg"),
    OpRecord("triangle", 1, _triangle_infer, _triangle, (), _triangle_adjoint, _triangle_tangent,
             "the entries on and below diagonal k (NumPy's tril), or on and above it with `upper` (triu), "
             "zeros elsewhere. attrs: k, upper", "linalg"),
)
