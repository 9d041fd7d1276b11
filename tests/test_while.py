"""`while cond max N` (LANGUAGE.md section 10): the body runs while `cond` holds, at most N times;
reaching N with `cond` still true is a run-time error naming the line. Gradients flow through the
trips that ran: against central differences where trip counts depend on the data, and the Newton
example against the implicit function theorem."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import example, located_error
from gradcheck import check_dot_product

IMPLICIT_RTOL = 1e-9  # the unrolled Newton derivative against the implicit one, at convergence
CD_STEP = 1e-6
CD_RTOL = 1e-6
SEED = 20261205


def test_newtons_method_gives_the_root_and_the_implicit_derivative():
    model = spadc.compile_file(example("newton_cubic.spad"))
    y = np.array([-3.0, 0.2, 1.0, 7.5, 40.0])  # a batch: each sample takes its own number of steps
    for p in (0.3, 1.0, 4.0):
        model.params["p"][...] = p
        root = model.forward(y=y).outputs["root"]
        np.testing.assert_allclose(root ** 3 + p * root, y, rtol=1e-11, atol=1e-11)
        _, grads = model.grad(y=y)
        implicit = np.mean(2 * (root - 0.5) * -root / (3 * root ** 2 + p))  # the mean loss's gradient
        assert grads["p"] == pytest.approx(implicit, rel=IMPLICIT_RTOL)


TRIPS = """param a: f64 = 0.7
param b: f64[3] ~ normal(0, 0.5)
input x: f64[3]
let s = a * x
let total = 0.0
let k = 0
while sum(s * s) < 4.0 and k < 10 max 10 {
  s = s * (1.0 + a) + b * tanh(s)
  total = total + sum(s) * b[k % 3]
  k = k + 1
}
output trips = k
loss total + sum(s * b)
"""


def test_gradients_through_data_dependent_trip_counts_meet_central_differences_and_the_interpreter():
    rng = np.random.default_rng(SEED)
    model = spadc.compile_source(TRIPS)
    model.init_params(seed=3)
    program = spadc.check_text(TRIPS, "t.spad")
    trips = set()
    for _ in range(6):
        x = rng.uniform(-1.0, 1.0, 3)
        params = {k: v.copy() for k, v in model.params.items()}
        result = model.forward(x=x)
        trips.add(int(result.outputs["trips"]))
        reference = evaluate(program, params, {"x": x})
        assert result.loss == pytest.approx(reference.loss, rel=1e-12)
        _, grads = model.grad(x=x)
        for name in params:
            for index in np.ndindex(params[name].shape):
                up = {k: v.copy() for k, v in params.items()}
                down = {k: v.copy() for k, v in params.items()}
                up[name][index] += CD_STEP
                down[name][index] -= CD_STEP
                difference = (model.loss(params=up, x=x) - model.loss(params=down, x=x)) / (2 * CD_STEP)
                assert grads[name][index] == pytest.approx(difference, rel=CD_RTOL, abs=CD_RTOL), (name, index)
        check_dot_product(lambda p: evaluate(program, p, {"x": x}).loss, params, grads, rng)
    assert len(trips) > 1, trips  # the trip counts did depend on the data


def test_curvature_through_a_while_loop():
    model = spadc.compile_file(example("newton_cubic.spad"))
    model.params["p"][...] = 1.3
    y = np.array([0.4, 2.0])
    direction = {"p": np.array(1.0)}
    step = 1e-5
    gradient = lambda p: model.grad(params={"p": np.array(p)}, y=y)[1]["p"]
    curvature = (gradient(1.3 + step) - gradient(1.3 - step)) / (2 * step)
    assert model.hvp(direction, y=y)["p"] == pytest.approx(curvature, rel=1e-6)
    assert np.mean(model.jvp(direction, y=y).loss_tangent) == pytest.approx(gradient(1.3), rel=1e-12)


def test_reaching_the_max_is_a_run_time_error_naming_the_line():
    text = open(example("newton_cubic.spad")).read().replace("max 60", "max 3")
    model = spadc.compile_source(text, name="newton.spad")
    with pytest.raises(spadc.SpadcError, match=r"newton\.spad:10:1: .*`while` reached its max of 3 iterations "
                                               r"with its condition still true"):
        model.loss(y=np.array([1.0, 40.0]))
    program = spadc.check_text(text, "newton.spad")
    with pytest.raises(spadc.SpadcError, match="`while` reached its max of 3 iterations"):
        evaluate(program, {"p": np.array(1.0)}, {"y": np.array(40.0)})
    assert model.loss(y=np.array(0.0)) == pytest.approx(0.25)  # already solved: no trip at all


def test_a_while_of_params_alone_fails_once_per_call_naming_no_sample():
    """A `while` on params alone is computed once per call (spadc/passes/hoist.py): its failure is
    no sample's, so the message names none (it said "(sample 0)")."""
    text = "param p: f64 = 40.0\ninput y: f64\nlet x = p\nwhile x > 1.0 max 3 {\n  x = x * 0.5\n}\nloss x * y\n"
    model = spadc.compile_source(text, name="once.spad")
    for call in (model.loss, lambda **inputs: model.grad(**inputs)):
        with pytest.raises(spadc.SpadcError) as info:
            call(y=np.array([1.0, 2.0]))
        message = str(info.value)
        assert "once.spad:4:1:" in message and "(in the part computed once per call)" in message, message
        assert "(sample" not in message
    # Per sample, the failure still names its sample.
    per_sample = text.replace("let x = p", "let x = p * y")
    with pytest.raises(spadc.SpadcError, match=r"\(sample 1\)"):
        spadc.compile_source(per_sample, name="each.spad").loss(y=np.array([0.01, 1.0]))


@pytest.mark.parametrize("text, message", [
    ("param p: f64\nlet x = p\nwhile x > 1.0 { x = x * 0.5 }\nloss x\n", "a `while` loop needs a bound"),
    ("param p: f64\nlet x = p\nwhile x > 1.0 max p { x = x * 0.5 }\nloss x\n",
     "the `max` of `while` must be known at compile time"),
    ("param p: f64\nlet x = p\nwhile x > 1.0 max 0 { x = x * 0.5 }\nloss x\n", "the `max` of `while` must be at least 1"),
    ("param p: f64\nlet x = p\nwhile x max 5 { x = x * 0.5 }\nloss x\n",
     "the condition of `while` must be a scalar bool, got f64"),
    ("param p: f64\nlet x = p\nwhile x > 1.0 max 5 {\n  output y = x\n}\nloss x\n", "`output` is not allowed inside a `while` loop"),
])
def test_mistakes_are_located_errors(text, message):
    located_error(text, message)
