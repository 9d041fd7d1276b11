"""The builtins of version 2.0 composed of primitives (LANGUAGE.md section 10): `var`, `std`,
`bce`, `huber`, `diag`, `trace`, `tril`, `triu`. Values against NumPy and PyTorch's definitions
written in NumPy; gradients against central differences of the compiled loss; mistakes give
located errors."""

import numpy as np
import pytest

import spadc

from conftest import located_error
from gradcheck import check_finite_differences

VALUE_RTOL = 1e-12
SEED = 20261205

PARAMS = "param A: f64[4, 4]\nparam v: f64[4]\ninput z: f64[4]\ninput t: f64[4]\n"


def _softplus(x):
    return np.logaddexp(0.0, x)


def _huber(d, delta):
    size = np.abs(d)
    return np.mean(np.where(size < delta, 0.5 * d * d, delta * (size - 0.5 * delta)))


CASES = {  # expression: its value in NumPy, from (A, v, z, t)
    "var(A)": lambda A, v, z, t: A.var(),
    "var(A, axis=0)[1] + var(A, axis=1)[3]": lambda A, v, z, t: A.var(axis=0)[1] + A.var(axis=1)[3],
    "std(A) + std(v * z, axis=0)": lambda A, v, z, t: A.std() + (v * z).std(axis=0),
    "bce(z * v, t)": lambda A, v, z, t: np.mean(_softplus(z * v) - z * v * t),
    "bce(v[0], 1.0)": lambda A, v, z, t: _softplus(v[0]) - v[0],
    "huber(z, t * v)": lambda A, v, z, t: _huber(z - t * v, 1.0),
    "huber(z * 3.0, v, delta=0.5)": lambda A, v, z, t: _huber(3 * z - v, 0.5),
    "sum(diag(v) * A)": lambda A, v, z, t: np.sum(np.diag(v) * A),
    "sum(diag(A @ A) * v)": lambda A, v, z, t: np.sum(np.diag(A @ A) * v),
    "trace(A @ transpose(A)) + trace(A)": lambda A, v, z, t: np.trace(A @ A.T) + np.trace(A),
    "sum(tril(A) * A) + sum(tril(A, -1))": lambda A, v, z, t: np.sum(np.tril(A) * A) + np.sum(np.tril(A, -1)),
    "sum(triu(A, k=1) * v) + sum(triu(A * A))": lambda A, v, z, t: np.sum(np.triu(A, 1) * v) + np.sum(np.triu(A * A)),
}


@pytest.mark.parametrize("expression", sorted(CASES))
def test_values_against_numpy_and_gradients_against_central_differences(expression):
    rng = np.random.default_rng(SEED)
    model = spadc.compile_source(PARAMS + f"loss {expression}\n")
    params = {"A": rng.standard_normal((4, 4)), "v": rng.standard_normal(4)}
    inputs = {"z": rng.standard_normal(4), "t": rng.uniform(0, 1, 4)}
    model.set_params(params)
    assert model.loss(**inputs) == pytest.approx(CASES[expression](**params, **inputs), rel=VALUE_RTOL)
    _, grads = model.grad(**inputs)
    check_finite_differences(lambda p: model.loss(params=p, **inputs), params, grads, rng)


def test_bce_has_the_derivative_sigmoid_minus_target_at_zero_too():
    model = spadc.compile_source("param z: f64[3]\ninput t: f64[3]\nloss bce(z, t)\n")
    t = np.array([0.0, 0.3, 1.0])
    _, grads = model.grad(t=t)  # z = 0: sigmoid(0) = 1/2
    np.testing.assert_allclose(grads["z"], (0.5 - t) / 3, rtol=VALUE_RTOL)


def test_a_triangle_keeps_no_gradient_for_what_it_drops():
    model = spadc.compile_source("param A: f64[3, 3]\nloss sum(tril(A, -1))\n")
    np.testing.assert_array_equal(model.grad()[1]["A"], np.tril(np.ones((3, 3)), -1))


@pytest.mark.parametrize("expression, message", [
    ("trace(v)", "`trace` needs a square matrix, got f64[4]"),
    ("sum(tril(A[0:2]))", "`tril` needs a square matrix, got f64[2, 4]"),
    ("sum(triu(A, 1, k=1))", "the offset of `triu` is given twice"),
    ("sum(tril(A, v[0]))", "the offset of `tril` must be known at compile time"),
    ("huber(z, t, delta=0.0)", "the `delta` of `huber` must be positive, got 0.0"),
    ("bce(z, A[0:3, 0])", "shapes do not match in `bce`: f64[4] and f64[3]"),
    ("var(A, axis=2)", "axis 2 is out of range for a tensor of rank 2"),
])
def test_mistakes_are_located_errors(expression, message):
    located_error(PARAMS + f"loss {expression}\n", message, line=5)
