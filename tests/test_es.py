"""Evolution strategies (ESTIMATORS.md section 8): forward passes only.

Oracles: the estimate recomputed from plain forward calls at the perturbed params (bit for bit);
on a quadratic, whose smoothed gradient is its exact gradient, a statistical test of unbiasedness
with power (it rejects the same estimator scaled by CONTROL_BIAS); training on a loss without a
useful derivative.
"""

import os

import numpy as np
import pytest

import spadc
from spadrt.diagnostics import diagnose, draws_for_power
from spadrt.es import perturbations

from conftest import example, run_cli

SEED = 11
DRAWS = 400
CONTROL_BIAS = 1.05
QUADRATIC = "param x: f64[3] = 0.5\ninput a: f64[3]\nloss sum(a * (x - 1.0) ^ 2) + x[0] * x[1]"
A = np.array([1.0, 2.0, 3.0])


def _quadratic():
    return spadc.compile_source(QUADRATIC, name="quadratic.spad")


@pytest.mark.parametrize("antithetic", [True, False])
def test_the_estimate_is_made_of_plain_forward_losses_at_the_perturbed_params(antithetic):
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(SEED)
    x = np.random.default_rng(1).standard_normal((5, 64))
    label = np.arange(5)
    estimator = spadc.ES(sigma=0.05, particles=6, antithetic=antithetic)
    loss, grads = model.grad(x=x, label=label, estimator=estimator, seed=3, step=2)
    eps = perturbations(estimator, 3, 2, model.flat_params.size)
    losses = np.array([np.mean(model.loss(x=x, label=label, params=model.flat_params + e)) for e in eps])
    if antithetic:
        expected = ((losses[0::2] - losses[1::2])[:, None] * eps[0::2]).sum(0) / (6 * 0.05 ** 2)
    else:
        expected = (losses[:, None] * eps).sum(0) / (6 * 0.05 ** 2)
    flat = np.concatenate([grads[p["name"]].ravel() for p in model.layout["params"]])
    np.testing.assert_allclose(flat, expected, rtol=1e-12, atol=1e-12)
    assert loss == pytest.approx(np.mean(model.loss(x=x, label=label)), rel=1e-15)


@pytest.mark.parametrize("antithetic, size", [(True, 7), (False, 8), (True, 1)])
def test_perturbations_are_the_documented_philox_streams(antithetic, size):
    """ESTIMATORS.md section 8: particle (or pair) j's normals come from Philox4x64-10 keyed
    (seed, ES_SITE) at counter (entry block, 0, j, step), by Box-Muller on consecutive uniforms.
    The oracle is NumPy's own Philox, one generator per stream."""
    from spadrt.es import ES_SITE
    seed, step, sigma, particles = 2**64 - 3, 5, 0.3, 6
    streams = particles // 2 if antithetic else particles
    rows = []
    for stream in range(streams):
        counter = (stream << 128 | step << 192) - 1  # NumPy adds one before each block
        words = np.random.Philox(counter=counter, key=seed | ES_SITE << 64).random_raw(2 * size + 4)
        u = (words >> np.uint64(11)) * 2.0 ** -53
        pairs = [(np.sqrt(-2 * np.log1p(-u[2 * k])), 2 * np.pi * u[2 * k + 1]) for k in range((size + 1) // 2)]
        rows.append(np.array([r * f(t) for r, t in pairs for f in (np.cos, np.sin)])[:size] * sigma)
    expected = np.stack([sign * row for row in rows for sign in (1, -1)]) if antithetic else np.stack(rows)
    got = perturbations(spadc.ES(sigma=sigma, particles=particles, antithetic=antithetic), seed, step, size)
    np.testing.assert_array_equal(got, expected)


LONG = os.environ.get("SPADC_LONG") == "1"
# Plain (not antithetic) ES's variance grows with the loss's value: the quick profile tests it where
# the loss is 0 (the quadratic shifted by a constant, which leaves its gradient alone), 5,000 draws
# for the same power; the long profile also at loss 1.75, 29,000 draws (14 s here).
PLAIN_OFFSETS = (-1.75, 0.0) if LONG else (-1.75,)


@pytest.mark.parametrize("antithetic, offset", [(True, 0.0)] + [(False, offset) for offset in PLAIN_OFFSETS])
def test_es_is_unbiased_on_a_quadratic_and_the_control_is_rejected(antithetic, offset):
    model = spadc.compile_source(f"{QUADRATIC} + {offset}", name="quadratic.spad")
    estimator = spadc.ES(sigma=0.2, particles=8, antithetic=antithetic)
    draws = max(DRAWS, draws_for_power(model, estimator, seed=SEED, a=A))
    report = diagnose(model, estimator, draws=draws, seed=SEED, a=A)
    assert report.unbiased, report
    control = diagnose(model, estimator, draws=draws, seed=SEED, bias=CONTROL_BIAS, a=A)
    assert not control.unbiased, control


def test_the_same_seed_gives_the_same_bits_on_any_thread_count():
    model = spadc.compile_file(example("mlp.spad"))
    x = np.random.default_rng(2).standard_normal((40, 64))
    label = np.arange(40) % 10
    estimator = spadc.ES(sigma=0.1, particles=70)  # more particles than one chunk
    results = [model.grad(x=x, label=label, estimator=estimator, seed=4, threads=t) for t in (1, 2, 3)]
    for loss, grads in results[1:]:
        assert loss == results[0][0]
        for name in grads:
            np.testing.assert_array_equal(grads[name], results[0][1][name])
    assert not np.array_equal(model.grad(x=x, label=label, estimator=estimator, seed=5)[1]["W1"], results[0][1]["W1"])


def test_es_trains_on_a_loss_without_a_useful_derivative():
    # A step function of the params: its exact gradient is 0 almost everywhere, its smoothed one is not.
    model = spadc.compile_source("param x: f64[2] = 2.0\nloss sum(floor(x * x))", name="steps.spad")
    assert np.all(model.grad()[1]["x"] == 0.0)
    start = model.loss()
    model.fit(None, steps=60, optimizer=spadc.SGD(lr=0.05), estimator=spadc.ES(sigma=0.5, particles=32))
    assert model.loss() < start - 4


@pytest.mark.parametrize("options, message", [
    (dict(sigma=0.0), "sigma must be a positive number"), (dict(sigma=float("nan")), "sigma must be"),
    (dict(particles=0), "particles must be a positive integer"), (dict(particles=3), "must be even"),
    (dict(antithetic=1), "antithetic must be True or False")])
def test_bad_settings_are_refused(options, message):
    with pytest.raises(spadc.SpadcError, match=message):
        spadc.ES(**options)


def test_the_command_line_trains_and_grads_with_es(tmp_path):
    grad = run_cli("grad", example("rosenbrock.spad"), "--estimator", "es", "--sigma", "0.01", "--particles", "16")
    assert grad.returncode == 0, grad.stderr
    assert "tape: 0 bytes per sample" in grad.stdout
    train = run_cli("train", example("rosenbrock.spad"), "--steps", "20", "--estimator", "es", "--quiet")
    assert train.returncode == 0, train.stderr
    refused = run_cli("ir", example("rosenbrock.spad"), "--estimator", "es")
    assert refused.returncode != 0 and "no gradient program" in refused.stderr


ES_DIGITS_ACCURACY = 0.85  # after 12 epochs (20 give 95.8%); chance is 10%


def test_es_trains_a_digits_classifier_on_its_error_rate():
    """examples/es_digits.spad: the loss is 0 or 1 per sample, so the exact gradient is 0 everywhere."""
    model = spadc.compile_file(example("es_digits.spad"))
    train = {k: v for k, v in np.load(example("data/digits_train.npz")).items() if k in ("x", "label")}
    test = {k: v for k, v in np.load(example("data/digits_test.npz")).items() if k in ("x", "label")}
    assert all(np.all(g == 0) for g in model.grad(**{k: v[:16] for k, v in train.items()})[1].values())
    model.fit(train, epochs=12, batch_size=128, optimizer=spadc.Adam(lr=0.03), estimator=spadc.ES(sigma=0.1, particles=200))
    accuracy = np.mean(np.argmax(model.forward(**test).outputs["logits"], axis=1) == test["label"])
    assert accuracy > ES_DIGITS_ACCURACY
