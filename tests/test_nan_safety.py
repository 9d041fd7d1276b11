"""NaN and inf never leak from the side of a `where` or an `if` that was not selected
(LANGUAGE.md section 6), and NaN inputs propagate as in NumPy until the loss says so."""

import math
import re

import numpy as np
import pytest

import spadc
import spadrt.training
from spadc.ir.interpret import evaluate

from gradcheck import interpreted_gradient

# expression of x, and a value of x where its partial (or its value) is infinite or NaN
UNBOUNDED = {
    "sqrt(x)": -1.0, "sqrt(x) ": 0.0, "log(x)": 0.0, "log(x) ": -1.0, "log1p(x)": -1.0, "x ^ 0.5": 0.0,
    "x ^ 1.5": -1.0, "2.0 ^ x": 2000.0, "1.0 / x": 0.0, "x / (x - 1.0)": 1.0, "exp(x)": 1000.0,
    "expm1(x)": 1000.0, "tan(x)": math.inf, "sin(x)": math.inf, "cos(x)": math.inf, "tanh(x)": math.nan,
    "sigmoid(x)": math.nan, "softplus(x)": math.nan, "abs(x)": math.nan, "x * exp(1000.0 * x)": 1.0,
    "x % 0.0": 1.0, "prod([x, exp(1000.0 * x)])": 1.0, "x * log(x)": 0.0,
}
X = [0.25, None, 0.125]  # the middle entry takes the bad value


@pytest.mark.parametrize("expression", sorted(UNBOUNDED))
def test_where_gives_the_unselected_side_exactly_zero(expression):
    bad = UNBOUNDED[expression]
    entries = ", ".join(re.sub(r"\bx\b", f"x[{i}]", expression) for i in range(3))
    text = (f"param p: f64[3] = [{X[0]}, 7.0, {X[2]}]\ninput x0: f64[3]\ninput mask: f64[3]\n"
            f"let x = p * 0.0 + x0\n"
            f"let f = [{entries}]\n"
            f"loss sum(where(mask > 0.5, f, 0.0))")
    inputs = {"x0": np.array([X[0], bad, X[2]]), "mask": np.array([1.0, 0.0, 1.0])}
    with np.errstate(all="ignore"):
        model = spadc.compile_source(text, name="nan.spad")
        params = {"p": np.array([X[0], 7.0, X[2]])}
        loss, grads = model.grad(**inputs)
        reference = interpreted_gradient(spadc.check_text(text, "nan.spad"), params, inputs)[1]
    for gradient in (grads["p"], reference["p"]):
        assert gradient[1] == 0.0 and np.all(np.isfinite(gradient)), gradient


@pytest.mark.parametrize("function", ["sqrt", "log"])
def test_the_reported_cases(function):
    text = f"param x: f64[3] = [-1.0, 0.0, 4.0]\nloss sum(where(x > 0, {function}(x), 0.0))"
    with np.errstate(all="ignore"):
        _, grads = spadc.compile_source(text).grad()
    assert np.array_equal(grads["x"], [0.0, 0.0, 0.25])  # sqrt'(4) = 1 / (2 * 2), log'(4) = 1 / 4


def test_if_gives_the_branch_not_taken_exactly_zero():
    text = "param x: f64 = 0.0\nloss if x > 0 then sqrt(x) + log(x) else 3.0 * x"
    with np.errstate(all="ignore"):
        assert spadc.compile_source(text).grad() == (0.0, {"x": 3.0})


@pytest.mark.parametrize("expression", ["relu(x)", "max(x, 0.0)", "min(x, 0.0)", "max(x)", "min(x)",
                                        "max(0.0, x)", "abs(x)"])
def test_nan_propagates_through_relu_max_and_min_as_in_numpy(expression):
    text = f"input x: f64[3]\noutput y = {expression}\nloss sum(y)"
    x = np.array([1.0, math.nan, -2.0])
    compiled = spadc.compile_source(text).forward(x=x)
    reference = evaluate(spadc.check_text(text), {}, {"x": x})
    assert math.isnan(compiled.loss) and math.isnan(reference.loss)
    numpy = {"relu(x)": np.maximum(x, 0.0), "max(x, 0.0)": np.maximum(x, 0.0), "min(x, 0.0)": np.minimum(x, 0.0),
             "max(x)": np.max(x), "min(x)": np.min(x), "max(0.0, x)": np.maximum(0.0, x), "abs(x)": np.abs(x)}
    np.testing.assert_array_equal(compiled.outputs["y"], numpy[expression])


def test_a_nan_input_stops_training_naming_the_step():
    model = spadc.compile_source("input x: f64[4]\ninput label: i64\nparam W: f64[3, 4] ~ normal(0, 1)\n"
                                 "loss cross_entropy(relu(W @ x), label)", name="n.spad")
    x = np.ones((20, 4))
    x[13, 2] = math.nan
    with pytest.warns(spadrt.training.TrainingStopped, match="the loss became nan"):
        history = model.fit({"x": x, "label": np.zeros(20, dtype=np.int64)}, epochs=3, batch_size=5, seed=0)
    assert re.match(r"the loss became nan at step \d+ \(epoch 1, minibatch \d\)", history.stopped or "")
    assert history.train_loss == []  # nothing after the NaN was trained on


ARGMAX_CASES = [
    [1.0, 3.0, 3.0, 2.0],  # ties: the first
    [np.nan, 1.0, 5.0, 2.0],  # NaN first: NaN wins, as np.argmax says
    [1.0, 7.0, np.nan, np.nan],  # the first NaN
    [-np.inf, -np.inf, -np.inf, -np.inf],
]


@pytest.mark.parametrize("values", ARGMAX_CASES)
def test_argmax_follows_numpy_on_ties_and_nans(values):
    model = spadc.compile_source("input v: f64[4]\ninput w: f64[2, 4]\noutput k = argmax(v)\n"
                                 "output rows = argmax(w, axis=1)\noutput cols = argmax(w, axis=0)\nloss 0.0",
                                 name="argmax.spad")
    v = np.array(values)
    w = np.stack([v, v[::-1]])
    out = model.forward(v=v, w=w).outputs
    assert out["k"] == np.argmax(v)
    np.testing.assert_array_equal(out["rows"], np.argmax(w, axis=1))
    np.testing.assert_array_equal(out["cols"], np.argmax(w, axis=0))
