"""Slices with a start known at run time (LANGUAGE.md section 10): `x[s : s + L]`, L a compile-time
constant. Values against NumPy at every start; gradients against central differences and the
interpreter (dot product); a start out of range is a run-time error naming the line, in compiled
code and in the interpreter; one proved in range (a loop's index) is not checked."""

import numpy as np
import pytest

import spadc
from spadc.ir.core import walk_ops
from spadc.ir.interpret import evaluate

from conftest import located_error
from gradcheck import check_dot_product, check_finite_differences

SEED = 20261205
TEXT = """input s: i64
param x: f64[6]
param A: f64[4, 5]
let windows = [sum(x[i:i + 3] * x[i + 1:i + 4]) for i in 0..3]
let odd = x[min(s, 2) % 2:min(s, 2) % 2 + 4]
loss sum(x[s:s + 2] * x[s + 1:s + 3]) + sum(A[1:3, s:s + 3] * A[0:2, 1:4]) + sum(x[2 * s - s:s + 3]) + sum(windows) + sum(odd)
"""


def _numpy(x, A, s):
    windows = sum(np.sum(x[i:i + 3] * x[i + 1:i + 4]) for i in range(3))
    odd = x[min(s, 2) % 2:min(s, 2) % 2 + 4]  # a start that is not linear in s: one unknown, the same in both bounds
    return (np.sum(x[s:s + 2] * x[s + 1:s + 3]) + np.sum(A[1:3, s:s + 3] * A[0:2, 1:4]) + np.sum(x[s:s + 3]) + windows
            + np.sum(odd))


def test_every_start_against_numpy_and_gradients_against_central_differences():
    rng = np.random.default_rng(SEED)
    model = spadc.compile_source(TEXT)
    program = spadc.check_text(TEXT, "t.spad")
    params = {"x": rng.standard_normal(6), "A": rng.standard_normal((4, 5))}
    model.set_params(params)
    for s in range(3):  # every start at which all the slices fit
        assert model.loss(s=s) == pytest.approx(_numpy(params["x"], params["A"], s), rel=1e-13)
        _, grads = model.grad(s=s)
        check_finite_differences(lambda p: model.loss(params=p, s=s), params, grads, rng)
        check_dot_product(lambda p: evaluate(program, p, {"s": np.array(s)}).loss, params, grads, rng)


@pytest.mark.parametrize("s", [3, -1, 100])
def test_a_start_out_of_range_is_a_run_time_error_naming_the_line(s):
    model = spadc.compile_source(TEXT, name="slices.spad")
    message = r"slices\.spad:6:\d+: error: run-time error: `[xA]`: a slice of \d from -?\d+ is out of range for axis \d"
    with pytest.raises(spadc.SpadcError, match=message):
        model.loss(s=s)
    with pytest.raises(spadc.SpadcError, match="is out of range for axis"):
        evaluate(spadc.check_text(TEXT, "slices.spad"), dict(model.params), {"s": np.array(s)})


def test_a_start_proved_in_range_is_not_checked_and_one_from_an_input_is():
    program = spadc.frontend.lower(spadc.check_text(TEXT, "t.spad"))
    checked = [op.attrs["spec"] for op in walk_ops(program.body) if op.kind == "index"
               and any(kind == "dyn" and len(rest) == 2 for kind, *rest in op.attrs["spec"])]
    flags = [rest[0] for spec in checked for kind, *rest in spec if kind == "dyn"]
    assert flags.count(True) == 4 and flags.count(False) == 3, checked  # s: checked; the loop's i, min(s, 2) % 2: proved


@pytest.mark.parametrize("expression, message", [
    ("sum(x[s:2 * s])", "the length of a slice must be known at compile time: write it as `x[s : s + L]`"),
    ("sum(x[s:])", "a slice with a start known only at run time needs both bounds"),
    ("sum(x[s:s + 7])", "a slice of 7 does not fit axis 0 of `x` (length 6)"),
    ("sum(x[s + 1:s])", "a slice of -1 does not fit axis 0"),
    ("sum(x[x[0]:x[0] + 2])", "the start of a slice must be an i64 scalar, got f64"),
])
def test_mistakes_are_located_errors(expression, message):
    located_error(f"input s: i64\nparam x: f64[6]\nparam A: f64[4, 5]\nloss {expression}\n", message, line=4)
