"""fns that return several values (LANGUAGE.md section 10): `return h, c`, `-> (T, T)`, and
`let h, c = f(...)` / `h, c = f(...)`, inside loops too. The LSTM example (a tuple-returning cell,
gates from one `concat`) against an LSTM written in NumPy, its gradient against central
differences; a bad arity is a located error."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import example, located_error
from gradcheck import check_dot_product, check_finite_differences

SEED = 20261205


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def numpy_lstm(params, seq):
    W, b, w_out = params["W"], params["b"], params["w_out"]
    n = len(b) // 4
    h, c = np.zeros(n), np.zeros(n)
    for x in seq:
        z = W @ np.concatenate([x, h]) + b
        i, f, g, o = _sigmoid(z[:n]), _sigmoid(z[n:2 * n]), np.tanh(z[2 * n:3 * n]), _sigmoid(z[3 * n:])
        c = f * c + i * g
        h = o * np.tanh(c)
    return w_out @ h


def test_the_lstm_example_against_numpy_and_central_differences():
    rng = np.random.default_rng(SEED)
    model = spadc.compile_file(example("lstm.spad"))
    model.init_params(seed=1)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in model.params.items()}
    model.set_params(params)
    inputs = {"seq": rng.standard_normal((12, 4)), "target": 0.3}
    prediction = numpy_lstm(params, inputs["seq"])
    assert model.forward(**inputs).outputs["prediction"] == pytest.approx(prediction, rel=1e-12)
    assert model.loss(**inputs) == pytest.approx((prediction - 0.3) ** 2, rel=1e-12)
    _, grads = model.grad(**inputs)
    check_finite_differences(lambda p: model.loss(params=p, **inputs), params, grads, rng)
    program = spadc.check_text(open(example("lstm.spad")).read(), "lstm.spad")
    check_dot_product(lambda p: evaluate(program, p, inputs).loss, params, grads, rng)


FN = "fn pair(a) -> (f64, f64) {\n  return a * 2.0, a + 1.0\n}\nparam p: f64 = 0.5\n"


def test_values_are_bound_in_order_and_rebound_in_loops():
    model = spadc.compile_source(FN + "let u, v = pair(p)\nfor t in 0..3 {\n  u, v = pair(u + v)\n}\nloss u - v\n")
    u, v = 2 * 0.5, 0.5 + 1
    for _ in range(3):
        u, v = 2 * (u + v), (u + v) + 1
    assert model.loss() == pytest.approx(u - v, rel=1e-15)
    # s = u + v starts at 3p + 1 and each step makes it 3s + 1; at the end u - v = s - 1: d/dp = 3^3
    assert model.grad()[1]["p"] == pytest.approx(27.0, rel=1e-15)


@pytest.mark.parametrize("text, message", [
    (FN + "loss pair(p)\n", "`pair` returns 2 values: bind them to names, as in `let v0, v1 = pair(...)`"),
    (FN + "let a, b, c = pair(p)\nloss a\n", "`pair` returns 2 values, but 3 names are bound to it"),
    ("fn one(a) = a * 2.0\nparam p: f64\nlet a, b = one(p)\nloss a\n", "`one` returns one value, but 2 names are bound"),
    ("fn bad(a) -> (f64, f64) {\n  return a\n}\nparam p: f64\nlet a, b = bad(p)\nloss a\n",
     "`bad` is declared to return 2 values but returns 1"),
    ("fn bad(a) -> f64 {\n  return a, a\n}\nparam p: f64\nlet a, b = bad(p)\nloss a\n",
     "`bad` is declared to return 1 value but returns 2"),
    (FN + "let a, b = p\nloss a\n", "only the call of a fn that returns several values can be unpacked into 2 names"),
    (FN + "a, b = pair(p)\nloss p\n", "`a` is not declared; declare it with `let a = ...`"),
    ("fn bad(a) -> (f64, f64[2]) {\n  return a, a\n}\nparam p: f64\nlet a, b = bad(p)\nloss a\n",
     "the result of `bad` must be f64[2], got f64"),
])
def test_a_bad_arity_is_a_located_error(text, message):
    located_error(text, message)
