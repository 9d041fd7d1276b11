"""The adjoint of an `if` costs what the branch taken reads (issue 22): a branch that reads one
entry of a param adds one entry to its gradient, not a tensor of the param's size. Work is counted
in the gradient program, not timed: the entries every primitive op writes, times the trips of the
loops around it (both branches of a cond counted, an upper bound). Derivatives of the programs that take
the sparse path meet central differences (gradient, JVP and Hessian product)."""

import pytest

import spadc
from spadc import passes
from spadc.ad.reverse import gradient

from test_silent_derivatives import _check_derivatives

IF_IN_COMPREHENSION = """param P: f64[25, 55]
input x: f64
let v = [[if j % 2 == 0 then P[k, j] * x else 0.0 for j in 0..55] for k in 0..25]
loss sum(v)
"""
WHERE_IN_COMPREHENSION = IF_IN_COMPREHENSION.replace("if j % 2 == 0 then P[k, j] * x else 0.0",
                                                     "where(j % 2 == 0, P[k, j] * x, 0.0)")


def _work(block, trips: int = 1) -> int:
    total = 0
    for op in block.ops:
        inner = trips * (op.attrs["hi"] - op.attrs["lo"]) if op.kind in ("loop", "tabulate") else trips
        if not op.regions:  # a region op's results are its bodies' yields, counted there
            # index_add updates its accumulator in place (spadc/backend/memory.py): the entries it adds
            total += trips * (op.args[1].type.size if op.kind == "index_add" else op.result.type.size)
        for region in op.regions:
            total += _work(region, inner)
    return total


def _forward_and_gradient_work(text: str) -> tuple[int, int]:
    program = spadc.frontend.lower(spadc.check_text(text, "t.spad"))
    forward = passes.run(program)
    adjoint = passes.run(gradient(program).program)
    return _work(forward.body), _work(adjoint.body)


def test_the_gradient_of_a_branch_that_reads_one_entry_does_no_more_work_than_wheres():
    """Before: 5,700,803 entries written, 592 times the forward's 9,626 (a zero gradient of P, 1,375
    entries, made and added in each of the 1,375 branches); now 30,303, as `where`'s gradient."""
    forward, adjoint = _forward_and_gradient_work(IF_IN_COMPREHENSION)
    where_forward, where_adjoint = _forward_and_gradient_work(WHERE_IN_COMPREHENSION)
    assert forward <= where_forward and adjoint <= where_adjoint, (forward, adjoint, where_forward, where_adjoint)


# Conds whose branches read params by index, in the ways the sparse path must get right.
SPARSE_CASES = {
    "one entry, one branch": ("param P: f64[3, 4]\ninput x: f64[3]\nlet v = [[if j % 2 == 0 then P[k, j] * x[k] else "
                              "0.0 for j in 0..4] for k in 0..3]\nloss sum(v)\n"),
    "an entry in each branch, different positions": (
        "param P: f64[3, 4]\ninput x: f64[3]\nlet v = [if x[i] > 0.0 then tanh(P[i, 1]) * x[i] else P[2 - i, 3] ^ 2 "
        "for i in 0..3]\nloss sum(v * v)\n"),
    "two entries of one param in one branch": (
        "param P: f64[4]\ninput x: f64[3]\nlet v = [if x[i] > -0.5 then P[i] * P[i + 1] else 0.5 for i in 0..3]\n"
        "loss sum(v)\n"),
    "a row (a slice) and an entry": (
        "param P: f64[3, 4]\ninput x: f64[3]\nlet v = [if x[i] > 0.0 then sum(P[i] * P[i]) + P[i, 0] else P[0, i] "
        "for i in 0..3]\nloss sum(v)\n"),
    "an entry and the whole param": (
        "param P: f64[3, 4]\ninput x: f64[3]\nlet v = [if x[i] > 0.0 then P[i, 2] * 3.0 else sum(P) * x[i] "
        "for i in 0..3]\nloss sum(v * v)\n"),
    "in a loop": (
        "param P: f64[3, 3]\ninput x: f64[3]\nlet h = x\nfor t in 0..3 {\n  h = [if h[i] > 0.0 then tanh(P[t, i] * "
        "h[i]) else h[i] * P[i, t] for i in 0..3]\n}\nloss sum(h * h)\n"),
    "nested conds": (
        "param P: f64[3, 3]\ninput x: f64[3]\nlet v = [if x[i] > -0.2 then (if i > 0 then P[i, i - 1] * x[i] else "
        "exp(P[0, 0])) else P[i, 2] for i in 0..3]\nloss sum(v * v)\n"),
}


@pytest.mark.parametrize("case", sorted(SPARSE_CASES))
def test_sparse_branch_adjoints_meet_central_differences(case):
    _check_derivatives(SPARSE_CASES[case])
