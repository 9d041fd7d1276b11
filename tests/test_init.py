"""Parameter initialisers: values, distributions, seeds and bounds."""

import numpy as np
import pytest

import spadc

from conftest import check

SAMPLES = 40000  # entries drawn per distribution test
K_SIGMA = 5


def init(text, seed=0):
    return spadc.initial_params(check(text + "\nloss 0.0"), seed=seed)


def test_default_is_zero_and_values_broadcast():
    p = init("param a: f64[2, 3]\nparam b: f64[3] = 0.5\nparam c: f64[2, 2] = [1, 2]\nparam d: f64[3, 3] = eye(3)\n"
             "const N = 4\nparam z: f64[N] = zeros(N)")
    assert np.array_equal(p["a"], np.zeros((2, 3)))
    assert np.array_equal(p["b"], np.full(3, 0.5))
    assert np.array_equal(p["c"], [[1.0, 2.0], [1.0, 2.0]])
    assert np.array_equal(p["d"], np.eye(3)) and np.array_equal(p["z"], np.zeros(4))


def test_initial_value_that_does_not_broadcast_is_an_error():
    with pytest.raises(spadc.SpadcError, match="does not broadcast to f64\\[3\\]"):
        init("param c: f64[3] = [1, 2]")


def test_normal_mean_and_std():
    x = init(f"param w: f64[{SAMPLES}] ~ normal(1.5, 0.25)")["w"]
    assert abs(x.mean() - 1.5) < K_SIGMA * 0.25 / np.sqrt(SAMPLES)
    assert abs(x.std() - 0.25) < K_SIGMA * 0.25 / np.sqrt(2 * SAMPLES)


def test_uniform_range_and_mean():
    x = init(f"param w: f64[{SAMPLES}] ~ uniform(-2, 4)")["w"]
    assert x.min() >= -2 and x.max() < 4
    assert abs(x.mean() - 1.0) < K_SIGMA * 6 / np.sqrt(12 * SAMPLES)


def test_glorot_limit_uses_first_and_last_dimensions():
    x = init("param W: f64[200, 100] ~ glorot()")["W"]
    limit = np.sqrt(6 / (100 + 200))
    assert np.abs(x).max() <= limit
    assert abs(x.std() - limit / np.sqrt(3)) < K_SIGMA * limit / np.sqrt(3 * x.size)


def test_same_seed_same_bits_and_params_are_independent_of_each_other():
    a = init("param u: f64[5] ~ normal(0, 1)\nparam v: f64[5] ~ normal(0, 1)", seed=7)
    b = init("param v: f64[5] ~ normal(0, 1)\nparam extra: f64[2] ~ normal(0, 1)\nparam u: f64[5] ~ normal(0, 1)", seed=7)
    c = init("param u: f64[5] ~ normal(0, 1)\nparam v: f64[5] ~ normal(0, 1)", seed=8)
    assert np.array_equal(a["u"], b["u"]) and np.array_equal(a["v"], b["v"])
    assert not np.array_equal(a["u"], c["u"]) and not np.array_equal(a["u"], a["v"])


def test_values_are_projected_into_bounds():
    p = init("param x: f64[1000] in [-1, 1] ~ normal(0, 5)\nparam y: f64 in [0, 1] = 3")
    assert p["x"].min() == -1 and p["x"].max() == 1 and p["y"] == 1


def test_distribution_errors():
    with pytest.raises(spadc.SpadcError, match="unknown distribution `gauss`"):
        init("param w: f64 ~ gauss(0, 1)")
    with pytest.raises(spadc.SpadcError, match="`normal` takes 2 arguments"):
        init("param w: f64 ~ normal(0)")
    with pytest.raises(spadc.SpadcError, match="std of `normal`"):
        init("param w: f64 ~ normal(0, -1)")
    with pytest.raises(spadc.SpadcError, match="lo < hi"):
        init("param w: f64 in [1, 0]")
