"""Functional updates (LANGUAGE.md section 10): `x[i] = e`, `x[i, j] = e`, `x[a:b] = e`,
`x[:, j] = e`, `x[s : s + L] = e` and `x[i] += e` rebind `x` to a new value; nothing aliased
changes. Values against NumPy's in-place code on copies; gradients (to `e` and to the old entries
not overwritten) against central differences and the interpreter's (dot-product test), also in a
loop and under RAD; mistakes are located errors."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import located_error
from gradcheck import check_dot_product, check_finite_differences

SEED = 20261205
TEXT = """input s: i64
param x: f64[5]
param A: f64[3, 4]
let y = x * 2.0
let kept = y
y[1] = x[0] * x[3]
y[2:4] += x[0:2]
y[s] = 7.0
let B = A
B[:, s] = A[0, 0:3] * 3.0
B[1, 1:3] += 1.0
B[2] = tanh(A[2])
B[0, s:s + 2] = x[3:5]
for i in 0..2 {
  y[i + 1] = y[i] * 0.5 + y[i + 1]
}
loss sum(y * y) + sum(B * A) + sum(kept * x)
"""


def numpy_reference(x, A, s):
    y = x * 2.0
    kept = y.copy()  # value semantics: `kept` is not changed by the updates of `y`
    y[1] = x[0] * x[3]
    y[2:4] += x[0:2]
    y[s] = 7.0
    B = A.copy()
    B[:, s] = A[0, 0:3] * 3.0
    B[1, 1:3] += 1.0
    B[2] = np.tanh(A[2])
    B[0, s:s + 2] = x[3:5]
    for i in range(2):
        y[i + 1] = y[i] * 0.5 + y[i + 1]
    return np.sum(y * y) + np.sum(B * A) + np.sum(kept * x)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_updates_against_numpy_and_gradients_against_central_differences_and_a_dot_product(s):
    rng = np.random.default_rng(SEED + s)
    model = spadc.compile_source(TEXT)
    params = {"x": rng.standard_normal(5), "A": rng.standard_normal((3, 4))}
    model.set_params(params)
    assert model.loss(s=s) == pytest.approx(numpy_reference(params["x"], params["A"], s), rel=1e-13)
    _, grads = model.grad(s=s)
    check_finite_differences(lambda p: model.loss(params=p, s=s), params, grads, rng)
    program = spadc.check_text(TEXT, "t.spad")
    check_dot_product(lambda p: evaluate(program, p, {"s": np.array(s)}).loss, params, grads, rng)


def test_overwritten_entries_get_no_gradient_and_the_new_value_gets_theirs():
    model = spadc.compile_source("param x: f64[4]\nparam v: f64\nlet y = x\ny[1:3] = v\nloss sum(y * [1.0, 2.0, 3.0, 4.0])\n")
    _, grads = model.grad()
    assert grads["x"].tolist() == [1.0, 0.0, 0.0, 4.0] and grads["v"] == 5.0


def test_rad_through_updates_is_unbiased_where_it_is_exact_with_keep_one():
    model = spadc.compile_source(TEXT)
    model.init_params(seed=2)
    exact = model.grad(s=1)[1]
    sampled = model.grad(s=1, estimator=spadc.RAD(keep=1.0, policy="edges"))[1]
    for name in exact:
        np.testing.assert_array_equal(sampled[name], exact[name])


@pytest.mark.parametrize("text, message", [
    ("param x: f64[4]\nx[0] = 1.0\nloss sum(x)\n", "cannot assign to `x`: it is a param"),
    ("param x: f64[4]\ny[0] = 1.0\nloss sum(x)\n", "`y` is not declared; declare it with `let y = ...`"),
    ("param x: f64[4]\nlet y = x[0]\ny[0] = 1.0\nloss y\n", "`y` is a scalar: rebind it with `y = ...`"),
    ("param x: f64[4]\nlet y = x\ny[0:2] = x[0:3]\nloss sum(y)\n",
     "the entries of `y` updated are f64[2] but the new value is f64[3]"),
    ("param x: f64[4]\nlet y = x\ny[5] = 1.0\nloss sum(y)\n", "index 5 is out of range for axis 0 of `y` (length 4)"),
    ("param x: f64[4]\nlet y = x\ny[0] = x[0] > 0.0\nloss sum(y)\n", "needs a number, got bool"),
])
def test_mistakes_are_located_errors(text, message):
    located_error(text, message)


def test_an_index_out_of_range_at_run_time_names_the_line():
    model = spadc.compile_source("input k: i64\nparam x: f64[4]\nlet y = x\ny[k] += 1.0\nloss sum(y * y)\n", name="up.spad")
    with pytest.raises(spadc.SpadcError, match=r"up\.spad:4:1: error: run-time error: `y`: index 4 is out of range"):
        model.loss(k=4)
