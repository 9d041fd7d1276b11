"""The reference interpreter's loss on each example equals an independent NumPy computation."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import LONG, example

SEED = 1234
RTOL = 1e-12


def run_example(name, inputs, seed=SEED):
    program = spadc.frontend.lower(spadc.check_file(example(name)), verify_each=True)
    params = spadc.initial_params(program, seed=seed)
    return program, params, evaluate(program, params, inputs)


def test_rosenbrock():
    _, params, result = run_example("rosenbrock.spad", {})
    x = params["x"]
    assert np.array_equal(x, np.full(10, -1.2))
    expected = np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    assert result.loss == pytest.approx(expected, rel=RTOL)
    assert result.loss == pytest.approx(6316.2, rel=1e-12)  # the value stated in the example


def test_rastrigin():
    _, params, result = run_example("rastrigin.spad", {})
    x = params["x"]
    assert np.all(np.abs(x) <= 5.12)
    assert result.loss == pytest.approx(10 * 10 + np.sum(x ** 2 - 10 * np.cos(2 * np.pi * x)), rel=RTOL)


def test_ackley():
    _, params, result = run_example("ackley.spad", {})
    x = params["x"]
    expected = -20 * np.exp(-0.2 * np.sqrt(np.mean(x ** 2))) - np.exp(np.mean(np.cos(2 * np.pi * x))) + 20 + np.e
    assert result.loss == pytest.approx(expected, rel=RTOL)


def test_ackley_minimum_is_zero():
    program = spadc.check_file(example("ackley.spad"))
    assert abs(evaluate(program, {"x": np.zeros(10)}, {}).loss) < 1e-14


def test_styblinski_tang():
    _, params, result = run_example("styblinski_tang.spad", {})
    x = params["x"]
    assert result.loss == pytest.approx(0.5 * np.sum(x ** 4 - 16 * x ** 2 + 5 * x), rel=RTOL)


def test_styblinski_tang_minimum():
    program = spadc.check_file(example("styblinski_tang.spad"))
    loss = evaluate(program, {"x": np.full(10, -2.903534)}, {}).loss
    assert loss == pytest.approx(-39.16617 * 10, rel=1e-6)


def test_sphere():
    _, params, result = run_example("sphere.spad", {})
    assert result.loss == pytest.approx(np.sum(params["x"] ** 2), rel=RTOL)


def _mlp_numpy(params, x, label):
    h = np.maximum(params["W1"] @ x + params["b1"], 0)
    logits = params["W2"] @ h + params["b2"]
    m = logits.max()
    return m + np.log(np.sum(np.exp(logits - m))) - logits[label], logits


@pytest.mark.parametrize("label", [0, 3, 9])
def test_mlp(label):
    x = np.random.default_rng(SEED).standard_normal(64)
    program, params, result = run_example("mlp.spad", {"x": x, "label": label})
    assert program.classifier is not None
    expected, logits = _mlp_numpy(params, x, label)
    assert result.loss == pytest.approx(expected, rel=RTOL)
    assert np.allclose(result.outputs["logits"], logits, rtol=RTOL, atol=0)


def test_mlp_with_zero_params_has_loss_log_10():
    program = spadc.check_file(example("mlp.spad"))
    zeros = {d.name: np.zeros(d.value.type.shape) for d in program.params}
    assert evaluate(program, zeros, {"x": np.ones(64), "label": 2}).loss == pytest.approx(np.log(10), rel=RTOL)


def test_mlp_import_uses_library_functions():
    x = np.random.default_rng(SEED).standard_normal(64)
    _, params, result = run_example("mlp_import.spad", {"x": x, "label": 5})
    pre = params["W1"] @ x + params["b1"]
    h = np.where(pre > 0, pre, 0.01 * pre)
    logits = params["W2"] @ h + params["b2"]
    expected = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[5]
    assert result.loss == pytest.approx(expected, rel=RTOL)
    limit = np.sqrt(6 / (64 + 32))
    assert np.all(np.abs(params["W1"]) <= limit) and params["W1"].std() > limit / 3


def test_irnn():
    rng = np.random.default_rng(SEED)
    seq = rng.standard_normal((28, 28))
    _, params, result = run_example("irnn.spad", {"seq": seq, "label": 4})
    h = np.zeros(64)
    for t in range(28):
        h = np.maximum(params["Wx"] @ seq[t] + params["Wh"] @ h + params["b"], 0)
    logits = params["Wo"] @ h
    expected = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[4]
    assert np.array_equal(params["Wh"], np.eye(64))
    assert result.loss == pytest.approx(expected, rel=RTOL)


@pytest.mark.skipif(not LONG, reason="the long profile (SPADC_LONG=1, which CI runs): the interpreter takes 5 s over "
                    "its million scalar ops; the compiled model meets central differences in the quick one")
def test_reaction_diffusion():
    rng = np.random.default_rng(SEED)
    u0 = rng.uniform(0, 1, 64)
    target = rng.uniform(0, 1, 64)
    source = rng.standard_normal(64) * 0.1
    program = spadc.check_file(example("reaction_diffusion.spad"))
    result = evaluate(program, {"source": source, "rate": np.float64(1.5)}, {"u0": u0, "target": target})
    dx, dt, kappa = 1.0 / 64, 0.005, 0.01
    u = u0.copy()
    for _ in range(400):
        # Same operation order as the .spad source, so rounding agrees to RTOL after 400 steps.
        diffusion = kappa * (np.roll(u, 1) - 2 * u + np.roll(u, -1)) / dx ** 2
        u = u + dt * (diffusion + 1.5 * u * (1 - u) + source)
    assert np.allclose(result.outputs["final"], u, rtol=RTOL, atol=0)
    assert result.loss == pytest.approx(np.mean((u - target) ** 2), rel=RTOL)
