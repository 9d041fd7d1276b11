"""`state` declarations (LANGUAGE.md 1.1): per-sample state carried from one call to the next.

Oracles: values worked out by hand, the NumPy interpreter, and central differences with the
incoming state held fixed.
"""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import error
from gradcheck import SEED, check_finite_differences

ACCUMULATOR = "state c: f64[2] = 1.0\ninput x: f64[2]\nparam w: f64 = 2.0\nc = c + w * x\nloss sum(c * c)\n"
X = np.array([1.0, -0.5])


def test_a_state_starts_at_its_initial_value_and_is_carried_by_the_caller():
    model = spadc.compile_source(ACCUMULATOR, name="accumulator.spad")
    first = model.forward(x=X)
    # c = 1 + 2 x = (3, 0): loss 9; then c = (3, 0) + 2 x = (5, -1): loss 26.
    assert first.loss == 9.0 and np.array_equal(first.state["c"], [3.0, 0.0])
    second = model.forward(x=X, state=first.state)
    assert second.loss == 26.0 and np.array_equal(second.state["c"], [5.0, -1.0])
    assert "c" not in first.outputs and not [k for k in first.outputs if k.startswith("_")]


def test_the_incoming_state_is_not_differentiated():
    model = spadc.compile_source(ACCUMULATOR, name="accumulator.spad")
    state = {"c": np.array([3.0, 0.0])}
    loss, grads = model.grad(x=X, state=state)
    assert loss == 26.0 and grads["w"] == 2 * (5.0 * 1.0 + (-1.0) * (-0.5))  # d/dw sum(c^2) = 2 c . x
    params = {k: v.copy() for k, v in model.params.items()}
    check_finite_differences(lambda p: model.loss(params=p, x=X, state=state), params, grads,
                             np.random.default_rng(SEED))


def test_states_are_per_sample_in_a_batch_and_match_the_interpreter():
    text = ("state h: f64[3] = [0.1, 0.2, 0.3]\nstate calls: i64 = 0\ninput x: f64[3]\nparam W: f64[3, 3] ~ normal(0, 0.5)\n"
            "for t in 0..4 {\n  h = tanh(W @ h + x)\n}\ncalls = calls + 1\nloss sum(h * h) + float(calls)")
    model = spadc.compile_source(text, name="recurrent.spad")
    model.init_params(SEED)
    xs = np.random.default_rng(1).standard_normal((3, 3))
    out = model.forward(x=xs)
    again = model.forward(x=xs, state=out.state)
    np.testing.assert_array_equal(again.state["calls"], [2, 2, 2])
    program = spadc.check_text(text, "recurrent.spad")
    params = {k: v.copy() for k, v in model.params.items()}
    for i in range(3):
        reference = evaluate(program, params, {"x": xs[i], "h": out.state["h"][i], "calls": 1})
        assert again.loss[i] == pytest.approx(reference.loss, rel=1e-12)
        np.testing.assert_allclose(again.state["h"][i], reference.outputs["_state.h"], rtol=1e-12)


@pytest.mark.parametrize("text, message", [
    ("input x: f64\nfor t in 0..2 {\n  state s: f64 = 0.0\n}\nloss x", "`state` is not allowed inside"),
    ("state s: bool\nloss 0.0", "a state must be f64 or i64"),
    ("state s: f64[2] = [1.0, 2.0, 3.0]\nloss sum(s)", "does not broadcast"),
    ("state s: i64 = 0.5\nloss float(s)", "must be i64"),
])
def test_state_mistakes_are_located(text, message):
    assert message in str(error(text))


def test_state_arguments_are_checked():
    model = spadc.compile_source(ACCUMULATOR, name="accumulator.spad")
    with pytest.raises(spadc.SpadcError, match="unknown state `d`"):
        model.forward(x=X, state={"d": np.zeros(2)})
    with pytest.raises(spadc.SpadcError, match=r"`c` is a state, not an input: pass it as state="):
        model.forward(x=X, c=np.zeros(2))
    with pytest.raises(spadc.SpadcError, match="state `c` must have shape|input `c` must have shape"):
        model.forward(x=X, state={"c": np.zeros(3)})


UNROLLED = ("state s: f64[3] = 1.0\nparam theta: f64 = 0.2\nfor k in 0..2 {\n  s = 0.5 * s + theta * [1.0, -1.0, 2.0]\n}\n"
            "loss 0.5 * (s[0] - 1.0) ^ 2 + 0.1 * s[2] ^ 2")
STEPS, HORIZON, LR = 7, 3, 0.1


def test_fit_carries_state_through_an_episode_and_resets_it():
    """Truncated backpropagation through time, against the same loop written out by hand."""
    model = spadc.compile_source(UNROLLED, name="unrolled.spad")
    model.fit(None, steps=STEPS, optimizer=spadc.SGD(lr=LR), horizon=HORIZON)
    by_hand = spadc.compile_source(UNROLLED, name="unrolled.spad")
    state = None
    for step in range(STEPS):
        if step % HORIZON == 0:
            state = None
        carried, state = state, by_hand.forward(state=state).state
        _, grads = by_hand.grad(state=carried)
        by_hand.set_params({"theta": by_hand.params["theta"] - LR * grads["theta"]})
    assert model.params["theta"] == by_hand.params["theta"]
    fresh = spadc.compile_source(UNROLLED, name="unrolled.spad")
    fresh.fit(None, steps=STEPS, optimizer=spadc.SGD(lr=LR))  # every call from the initial state
    assert fresh.params["theta"] != model.params["theta"]


def test_horizon_needs_a_model_with_state():
    model = spadc.compile_source("param x: f64 = 1.0\nloss x * x", name="plain.spad")
    with pytest.raises(spadc.SpadcError, match="horizon= is for models with `state`"):
        model.fit(None, steps=2, horizon=2)
