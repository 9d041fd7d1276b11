"""LLVM emitters of the linear algebra primitives (records in spadc/ir/linalg.py).

Each runs the algorithm of its NumPy reference in the same order: the same pivots, the same run-time
errors (`e.check`, naming the user's line), so compiled results match the interpreter to rounding.

Invariants:
- A result never shares storage with an operand (the family `linalg` is not updated in place,
  spadc/backend/memory.py), so an emitter may write its result while it still reads its operands.
- `solve` eliminates in a scratch copy of [A | B] (`scratch_bytes`, planned in the workspace like any
  value): the operands are never written.
- The triangular loops read only the triangle their primitive reads.
"""

from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ..ir import linalg
from .scalar import call, fconst

I64 = ir.IntType(64)


def scratch_bytes(op, float_bytes: int) -> int:
    """Workspace bytes `op` needs while it runs, beyond its operands and result."""
    if op.kind == "solve":
        n = op.args[0].type.shape[0]
        return n * (n + op.args[1].type.size // n) * float_bytes
    return 0


def _columns(value) -> int:
    """The number of right-hand sides of a vector (1) or matrix operand."""
    return value.type.shape[1] if value.type.rank == 2 else 1


@contextmanager
def _accumulator(e, initial, name):
    """A register-promoted running value: yields (read, write)."""
    slot = e.alloca(e.float, name=name)
    e.b.store(initial, slot)
    yield (lambda: e.b.load(slot)), (lambda value: e.b.store(value, slot))


def _solve(e, op):
    a, rhs = op.args
    b, x = e.b, op.result
    n, m = a.type.shape[0], _columns(rhs)
    width = n + m
    work = b.bitcast(e.scratch(op), e.float.as_pointer())

    def cell(row, column):
        return b.gep(work, [b.add(b.mul(row, I64(width)), column)])

    with e.loop(n, "row") as i:  # work = [A | B]
        with e.loop(n, "col") as j:
            b.store(e.load(a, b.add(b.mul(i, I64(n)), j)), cell(i, j))
        with e.loop(m, "rhs") as j:
            b.store(e.load(rhs, b.add(b.mul(i, I64(m)), j)), cell(i, b.add(j, I64(n))))
    best, pivot_row = e.alloca(e.float, name="pivot"), e.alloca(I64, name="pivot.row")
    with e.loop(n, "k") as k:
        b.store(call(e, "llvm.fabs", b.load(cell(k, k))), best)
        b.store(k, pivot_row)
        below = b.add(k, I64(1))
        with e.loop(b.sub(I64(n), below), "i", start=below) as i:
            magnitude = call(e, "llvm.fabs", b.load(cell(i, k)))
            larger = b.fcmp_ordered(">", magnitude, b.load(best))
            b.store(b.select(larger, magnitude, b.load(best)), best)
            b.store(b.select(larger, i, b.load(pivot_row)), pivot_row)
        e.check(b.fcmp_unordered("!=", b.load(best), fconst(e, 0.0)), linalg.SINGULAR, op.loc, k)
        p = b.load(pivot_row)
        with e.loop(b.sub(I64(width), k), "swap", start=k) as j:
            top, other = b.load(cell(k, j)), b.load(cell(p, j))
            b.store(other, cell(k, j))
            b.store(top, cell(p, j))
        pivot = b.load(cell(k, k))
        with e.loop(b.sub(I64(n), below), "i", start=below) as i:
            factor = b.fdiv(b.load(cell(i, k)), pivot)
            with e.loop(b.sub(I64(width), below), "j", start=below) as j:
                b.store(b.fsub(b.load(cell(i, j)), b.fmul(factor, b.load(cell(k, j)))), cell(i, j))
    with e.loop(m, "rhs") as column:  # back substitution on the upper triangle
        with e.loop(n, "r") as r:
            i = b.sub(I64(n - 1), r)
            with _accumulator(e, b.load(cell(i, b.add(column, I64(n)))), "sum") as (total, set_total):
                after = b.add(i, I64(1))
                with e.loop(b.sub(I64(n), after), "j", start=after) as j:
                    known = e.load(x, b.add(b.mul(j, I64(m)), column))
                    set_total(b.fsub(total(), b.fmul(b.load(cell(i, j)), known)))
                e.store(x, b.add(b.mul(i, I64(m)), column), b.fdiv(total(), b.load(cell(i, i))))


def _cholesky(e, op):
    # Row by row: L[i, j] = (S[i, j] - sum_k<j L[i, k] L[j, k]) / L[j, j], the diagonal a square root.
    (s,), factor = op.args, op.result
    b, n = e.b, s.type.shape[0]

    def at(row, column):
        return b.add(b.mul(row, I64(n)), column)

    with e.loop(n, "i") as i:
        with e.loop(b.add(i, I64(1)), "j") as j:
            with _accumulator(e, e.load(s, at(i, j)), "sum") as (total, set_total):
                with e.loop(j, "k") as k:
                    set_total(b.fsub(total(), b.fmul(e.load(factor, at(i, k)), e.load(factor, at(j, k)))))
                on_diagonal = b.icmp_signed("==", i, j)
                positive = b.fcmp_ordered(">", total(), fconst(e, 0.0))
                e.check(b.or_(b.not_(on_diagonal), positive), linalg.NOT_POSITIVE_DEFINITE, op.loc, i)
                # (off the diagonal the square root is discarded; on it, the division)
                value = b.select(on_diagonal, call(e, "llvm.sqrt", total()), b.fdiv(total(), e.load(factor, at(j, j))))
                e.store(factor, at(i, j), value)
        after = b.add(i, I64(1))
        with e.loop(b.sub(I64(n), after), "j", start=after) as j:
            e.store(factor, at(i, j), fconst(e, 0.0))


def _trisolve(e, op):
    lower, rhs = op.args
    b, x = e.b, op.result
    n, m, transpose = lower.type.shape[0], _columns(rhs), op.attrs["transpose"]
    with e.loop(m, "rhs") as column:
        with e.loop(n, "r") as r:
            i = b.sub(I64(n - 1), r) if transpose else r  # L^T x = b is upper triangular: from the end
            with _accumulator(e, e.load(rhs, b.add(b.mul(i, I64(m)), column)), "sum") as (total, set_total):
                first = b.add(i, I64(1)) if transpose else I64(0)
                count = b.sub(I64(n), first) if transpose else i
                with e.loop(count, "j", start=first) as j:
                    entry = b.add(b.mul(j, I64(n)), i) if transpose else b.add(b.mul(i, I64(n)), j)
                    known = e.load(x, b.add(b.mul(j, I64(m)), column))
                    set_total(b.fsub(total(), b.fmul(e.load(lower, entry), known)))
                diagonal = e.load(lower, b.add(b.mul(i, I64(n)), i))
                e.store(x, b.add(b.mul(i, I64(m)), column), b.fdiv(total(), diagonal))


def _triangle(e, op):
    (x,), out = op.args, op.result
    n, k, upper = x.type.shape[0], op.attrs["k"], op.attrs["upper"]
    with e.nest((n, n)) as (i, j):
        offset = e.b.sub(j, i)
        keep = e.b.icmp_signed(">=" if upper else "<=", offset, I64(k))
        at = e.linear([i, j], [n, 1])
        e.store(out, at, e.b.select(keep, e.load(x, at), fconst(e, 0.0)))


EMITTERS = {"solve": _solve, "cholesky": _cholesky, "trisolve": _trisolve, "triangle": _triangle}
