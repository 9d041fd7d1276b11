"""exp, expm1 and tanh as vectorisable arithmetic (spadc/backend/exponential.py), against NumPy's
(glibc's) functions in units in the last place, over their whole range and at the edges: overflow,
gradual underflow, the switch points of the series, signed zeros, infinities and NaN."""

import numpy as np
import pytest

import spadc

SEED = 20261205
MAX_ULP = {"exp": 1, "expm1": 2, "tanh": 3}  # measured: 1, 2 and 3 over these points
F32_ULP = 1  # an f32 build rounds the double result once (NumPy in f32: correctly rounded or nearly)
EDGES = [0.0, -0.0, 1e-300, -1e-300, 5e-324, 1e-9, -1e-9, 0.999999, 1.0, 1.000001, -1.0, 0.3465735, 709.78, 709.79,
         -708.39, -708.4, -740.0, -745.13, -745.2, 19.06, 19.07, 40.0, 1e5, -1e5, np.inf, -np.inf, np.nan]


def _points():
    rng = np.random.default_rng(SEED)
    return np.concatenate([rng.uniform(-746, 710, 4000), 3 * rng.standard_normal(4000), 1e-4 * rng.standard_normal(1000),
                           rng.uniform(-1.01, 1.01, 2000), np.array(EDGES)])


def _compiled(function, x, dtype="f64"):
    model = spadc.compile_source(f"input x: f64[{x.size}]\noutput y = {function}(x)\nloss 0.0\n",
                                 name=f"{function}.spad", dtype=dtype)
    return np.asarray(model.forward(x=x).outputs["y"]).reshape(-1)


def _ulps(got, want):
    finite = np.isfinite(want) & (want != 0)
    return np.abs(got[finite] - want[finite]) / np.spacing(np.abs(want[finite]).astype(want.dtype))


@pytest.mark.parametrize("function", sorted(MAX_ULP))
def test_within_a_few_units_in_the_last_place_of_numpy_and_exact_at_the_edges(function):
    x = _points()
    with np.errstate(all="ignore"):
        want = getattr(np, function)(x)
    got = _compiled(function, x)
    assert _ulps(got, want).max() <= MAX_ULP[function]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    # exact where the value is (near 19.06 glibc's tanh rounds to 1 a value just below half a unit from it)
    special = np.isinf(want) | (want == 0) | ((np.abs(want) == 1) & (np.abs(x) > 20))
    np.testing.assert_array_equal(got[special], want[special])
    np.testing.assert_array_equal(np.signbit(got[want == 0]), np.signbit(want[want == 0]))  # -0 stays -0


@pytest.mark.parametrize("function", sorted(MAX_ULP))
def test_f32_builds_round_the_double_result_once(function):
    x = _points().astype(np.float32).astype(np.float64)
    with np.errstate(all="ignore"):
        want = getattr(np, function)(x).astype(np.float32)  # the correctly rounded f32 of the f64 value, nearly
    got = _compiled(function, x, "f32").astype(np.float32)
    assert _ulps(got, want).max() <= F32_ULP
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_a_deliberately_coarser_exp_would_be_rejected():
    """The bound has power: exp's Taylor polynomial cut at degree 9 instead of 13 misses by far more."""
    import math
    r = np.linspace(-0.5 * math.log(2), 0.5 * math.log(2), 1001)
    coarse = sum(r ** i / math.factorial(i) for i in range(10))
    assert _ulps(coarse, np.exp(r)).max() > 10 * MAX_ULP["exp"]
