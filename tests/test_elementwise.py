"""Every elementwise function of one operand (spadc/ir/elementwise.py), compiled, against oracles
that share nothing with its record: values from NumPy or Python's math module, first and second
derivatives worked out by hand, and central differences of the compiled loss and gradient; and its
f32 build against its f64 build.

Adding a function to the language is a record in spadc/ir/elementwise.py and a line in FUNCTIONS.
"""

import math

import numpy as np
import pytest

import spadc
from spadc.ir import elementwise

from conftest import example

VALUE_RTOL = 1e-13  # compiled libm against NumPy / math: both correctly rounded or nearly
DERIVATIVE_RTOL = 1e-12  # the compiled derivative against the hand formula at the same points
CD_STEP = 1e-6
CD_RTOL = 1e-6  # central differences: truncation ~ step^2 |f'''|, rounding ~ eps |f| / step
F32_RTOL = 1e-5

_erf = np.vectorize(math.erf)

# name: (points in the domain, value, first derivative, second derivative), written independently
FUNCTIONS = {
    "abs": ([-1.5, -0.3, 0.4, 2.0], np.abs, np.sign, lambda x: 0 * x),
    "exp": ([-2.0, -0.1, 0.5, 3.0], np.exp, np.exp, np.exp),
    "log": ([0.1, 0.7, 1.5, 9.0], np.log, lambda x: 1 / x, lambda x: -1 / x ** 2),
    "log1p": ([-0.5, 0.01, 1.0, 4.0], np.log1p, lambda x: 1 / (1 + x), lambda x: -1 / (1 + x) ** 2),
    "expm1": ([-1.0, 1e-3, 0.5, 2.0], np.expm1, np.exp, np.exp),
    "sqrt": ([0.2, 1.0, 2.5, 16.0], np.sqrt, lambda x: 0.5 / np.sqrt(x), lambda x: -0.25 * x ** -1.5),
    "sin": ([-2.0, 0.1, 1.0, 3.0], np.sin, np.cos, lambda x: -np.sin(x)),
    "cos": ([-2.0, 0.1, 1.0, 3.0], np.cos, lambda x: -np.sin(x), lambda x: -np.cos(x)),
    "tan": ([-1.0, 0.1, 0.5, 1.2], np.tan, lambda x: 1 / np.cos(x) ** 2, lambda x: 2 * np.tan(x) / np.cos(x) ** 2),
    "tanh": ([-2.0, -0.2, 0.3, 1.5], np.tanh, lambda x: 1 / np.cosh(x) ** 2,
             lambda x: -2 * np.tanh(x) / np.cosh(x) ** 2),
    "sigmoid": ([-3.0, -0.2, 0.4, 2.5], lambda x: 1 / (1 + np.exp(-x)),
                lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
                lambda x: np.exp(-x) * (np.exp(-x) - 1) / (1 + np.exp(-x)) ** 3),
    "softplus": ([-3.0, -0.2, 0.4, 2.5], lambda x: np.log(1 + np.exp(x)), lambda x: 1 / (1 + np.exp(-x)),
                 lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    "relu": ([-1.0, -0.1, 0.2, 3.0], lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, lambda x: 0 * x),
    "sign": ([-1.0, -0.1, 0.2, 3.0], np.sign, lambda x: 0 * x, lambda x: 0 * x),
    "floor": ([-1.5, -0.1, 0.2, 3.7], np.floor, lambda x: 0 * x, lambda x: 0 * x),
    "round": ([-1.6, -0.1, 0.7, 3.2], np.round, lambda x: 0 * x, lambda x: 0 * x),
    "sinh": ([-2.0, -0.1, 0.5, 3.0], np.sinh, np.cosh, np.sinh),
    "cosh": ([-2.0, -0.1, 0.5, 3.0], np.cosh, np.sinh, np.cosh),
    "asin": ([-0.9, -0.2, 0.3, 0.8], np.arcsin, lambda x: (1 - x * x) ** -0.5, lambda x: x * (1 - x * x) ** -1.5),
    "acos": ([-0.9, -0.2, 0.3, 0.8], np.arccos, lambda x: -(1 - x * x) ** -0.5, lambda x: -x * (1 - x * x) ** -1.5),
    "atan": ([-3.0, -0.2, 0.5, 2.0], np.arctan, lambda x: 1 / (1 + x * x), lambda x: -2 * x / (1 + x * x) ** 2),
    "lgamma": ([0.3, 1.0, 2.5, 7.9], np.vectorize(math.lgamma), lambda x: _scipy().digamma(x),
               lambda x: _scipy().polygamma(1, x)),
    "erf": ([-2.0, -0.3, 0.1, 1.5], _erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x),
            lambda x: -4 * x / np.sqrt(np.pi) * np.exp(-x * x)),
}
ROUNDING = {"round", "floor", "sign"}


def _scipy():
    """SciPy, the oracle of the polygamma functions (in the test extra; the tests that need it skip
    without it)."""
    return pytest.importorskip("scipy.special", reason="SciPy is the oracle of digamma and its derivatives "
                                                        "(pip install '.[test]' installs it)")  # piecewise constant: halves are checked by value below


def _model(name, dtype="f64"):
    points = FUNCTIONS[name][0]
    text = f"param p: f64[{len(points)}]\ninput w: f64[{len(points)}]\nloss sum(w * {name}(p))\n"
    model = spadc.compile_source(text, dtype=dtype)
    model.params["p"][:] = points
    return model, np.array(points)


def _values(model, n):
    return np.array([model.loss(w=np.eye(n)[i]) for i in range(n)])


def test_the_table_lists_every_function():
    assert set(FUNCTIONS) == {f.name for f in elementwise.UNARY}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_values_and_derivatives_against_independent_oracles(name):
    _, value, first, second = FUNCTIONS[name]
    model, x = _model(name)
    n = len(x)
    np.testing.assert_allclose(_values(model, n), value(x), rtol=VALUE_RTOL, atol=1e-300)
    _, grads = model.grad(w=np.ones(n))
    np.testing.assert_allclose(grads["p"], first(x), rtol=DERIVATIVE_RTOL, atol=1e-300)
    hessian_diagonal = model.hvp({"p": np.ones(n)}, w=np.ones(n))["p"]
    np.testing.assert_allclose(hessian_diagonal, second(x), rtol=DERIVATIVE_RTOL, atol=1e-15)
    tangent = model.jvp({"p": np.ones(n)}, w=np.ones(n)).loss_tangent
    assert tangent == pytest.approx(float(np.sum(first(x))), rel=DERIVATIVE_RTOL, abs=1e-15)
    if name not in ROUNDING:  # central differences of the compiled loss and of the compiled gradient
        step = CD_STEP * np.maximum(1.0, np.abs(x))
        up, down = model.params["p"] + step, model.params["p"] - step
        differences = [(model.loss(params={"p": up}, w=np.eye(n)[i]) - model.loss(params={"p": down}, w=np.eye(n)[i]))
                       / (2 * step[i]) for i in range(n)]
        np.testing.assert_allclose(grads["p"], differences, rtol=CD_RTOL, atol=CD_RTOL)
        gradient_differences = (model.grad(params={"p": up}, w=np.ones(n))[1]["p"]
                                - model.grad(params={"p": down}, w=np.ones(n))[1]["p"]) / (2 * step)
        np.testing.assert_allclose(hessian_diagonal, gradient_differences, rtol=CD_RTOL, atol=CD_RTOL)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_f32_builds_agree_with_f64(name):
    model, x = _model(name, "f32")
    np.testing.assert_allclose(_values(model, len(x)), FUNCTIONS[name][1](x), rtol=F32_RTOL, atol=F32_RTOL)


def test_round_takes_halves_to_even_as_numpy():
    halves = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
    model = spadc.compile_source(f"param p: f64[{len(halves)}]\ninput w: f64[{len(halves)}]\nloss sum(w * round(p))\n")
    model.params["p"][:] = halves
    np.testing.assert_array_equal(_values(model, len(halves)), np.round(halves))


def test_inverse_sine_outside_its_domain_is_nan_with_a_nan_derivative():
    model = spadc.compile_source("param p: f64\nloss asin(p) + acos(p)\n")
    model.params["p"][...] = 1.5
    loss, grads = model.grad()
    assert math.isnan(loss) and math.isnan(grads["p"])


# ---- activations composed of primitives: PyTorch's definitions, written here in NumPy ----------

def _phi(x):
    return np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def _gelu(x):
    return 0.5 * x * (1 + _erf(x / np.sqrt(2)))


COMPOSED = {  # expression: (value, derivative) on the points below
    "gelu(p)": (_gelu, lambda x: 0.5 * (1 + _erf(x / np.sqrt(2))) + x * _phi(x)),
    "silu(p)": (lambda x: x / (1 + np.exp(-x)), lambda x: (1 + np.exp(-x) + x * np.exp(-x)) / (1 + np.exp(-x)) ** 2),
    "elu(p)": (lambda x: np.where(x > 0, x, np.exp(x) - 1), lambda x: np.where(x > 0, 1.0, np.exp(x))),
    "elu(p, a=0.5)": (lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), lambda x: np.where(x > 0, 1.0, 0.5 * np.exp(x))),
    "leaky_relu(p)": (lambda x: np.where(x > 0, x, 0.01 * x), lambda x: np.where(x > 0, 1.0, 0.01)),
    "leaky_relu(p, a=0.2)": (lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, 1.0, 0.2)),
    "clip(p, -0.5, 1.0)": (lambda x: np.minimum(np.maximum(x, -0.5), 1.0), lambda x: ((x >= -0.5) & (x <= 1.0)) * 1.0),
}
# Off the kinks, and on them: 0 (elu and leaky_relu take the lower side's slope there, as PyTorch)
# and the bounds of clip (derivative 1 on both, as torch.clamp).
COMPOSED_POINTS = [-2.0, -0.5, -0.3, 0.0, 0.4, 1.0, 2.5]


@pytest.mark.parametrize("expression", sorted(COMPOSED))
def test_composed_activations_against_pytorchs_definitions(expression):
    value, derivative = COMPOSED[expression]
    x = np.array(COMPOSED_POINTS)
    n = len(x)
    model = spadc.compile_source(f"param p: f64[{n}]\ninput w: f64[{n}]\nloss sum(w * {expression})\n")
    model.params["p"][:] = x
    np.testing.assert_allclose(_values(model, n), value(x), rtol=VALUE_RTOL, atol=1e-300)
    np.testing.assert_allclose(model.grad(w=np.ones(n))[1]["p"], derivative(x), rtol=DERIVATIVE_RTOL, atol=1e-300)


def test_clip_sends_the_gradient_to_the_bound_it_takes_and_hi_wins_over_a_larger_lo():
    model = spadc.compile_source("param p: f64[3]\nparam lo: f64\nparam hi: f64\nloss sum([1.0, 2.0, 3.0] * clip(p, lo, hi))\n")
    model.params["p"][:] = [-3.0, 0.5, 4.0]
    model.params["lo"][...], model.params["hi"][...] = -1.0, 2.0
    _, grads = model.grad()
    assert grads["p"].tolist() == [0.0, 2.0, 0.0] and grads["lo"] == 1.0 and grads["hi"] == 3.0
    model.params["lo"][...], model.params["hi"][...] = 5.0, 2.0
    assert model.loss() == 12.0  # every entry is hi


def test_a_program_of_version_1_1_keeps_its_own_fn_of_a_new_builtins_name():
    model = spadc.compile_source("fn gelu(v) = 3.0 * v\nparam p: f64 = 2.0\nloss gelu(p)\n")
    assert model.loss() == 6.0
    with pytest.raises(spadc.SpadcError, match="`tanh` is a builtin function and cannot be redefined"):
        spadc.compile_source("fn tanh(v) = v\nparam p: f64\nloss tanh(p)\n")


def test_a_slope_that_is_not_a_constant_is_a_located_error():
    with pytest.raises(spadc.SpadcError, match=r"m:3:15: error: the `a` of `elu` must be known at compile time"):
        spadc.compile_source("param p: f64\nparam q: f64\nloss elu(p, a=q + p)\n")


def test_atan2_against_numpy_with_derivatives_by_hand_and_central_differences():
    y, x = np.array([1.0, -0.5, 2.0, -1.5, 0.3]), np.array([0.5, 2.0, -1.0, -0.2, -3.0])  # all four quadrants
    model = spadc.compile_source("param y: f64[5]\nparam x: f64[5]\ninput w: f64[5]\nloss sum(w * atan2(y, x))\n")
    model.set_params({"y": y, "x": x})
    np.testing.assert_allclose(_values(model, 5), np.arctan2(y, x), rtol=VALUE_RTOL)
    _, grads = model.grad(w=np.ones(5))
    np.testing.assert_allclose(grads["y"], x / (x * x + y * y), rtol=DERIVATIVE_RTOL)
    np.testing.assert_allclose(grads["x"], -y / (x * x + y * y), rtol=DERIVATIVE_RTOL)
    ones = {"y": np.ones(5), "x": np.ones(5)}
    r2 = x * x + y * y  # the Hessian's rows summed: d2/dy2 + d2/dxdy and d2/dydx + d2/dx2
    hessian_y = -2 * x * y / r2 ** 2 + (y * y - x * x) / r2 ** 2
    hessian_x = (y * y - x * x) / r2 ** 2 + 2 * x * y / r2 ** 2
    product = model.hvp(ones, w=np.ones(5))
    np.testing.assert_allclose(product["y"], hessian_y, rtol=DERIVATIVE_RTOL)
    np.testing.assert_allclose(product["x"], hessian_x, rtol=DERIVATIVE_RTOL)
    assert model.jvp(ones, w=np.ones(5)).loss_tangent == pytest.approx(float(np.sum((x - y) / r2)), rel=DERIVATIVE_RTOL)
    f32 = spadc.compile_source("param y: f64[5]\nparam x: f64[5]\ninput w: f64[5]\nloss sum(w * atan2(y, x))\n",
                               dtype="f32")
    f32.set_params({"y": y, "x": x})
    np.testing.assert_allclose(_values(f32, 5), np.arctan2(y, x), rtol=F32_RTOL)


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_an_ahead_of_time_library_computes_every_function_as_the_jit(tmp_path, dtype):
    import spadrt
    from spadc import aot
    terms = [f"{f.name}(0.3 + 0.2 * tanh(p))" for f in elementwise.UNARY]  # in every domain + ["atan2(p, q)", "digamma(p + 2.0)"] + list(COMPOSED)
    source = tmp_path / "functions.spad"
    # Scalars: a sum of 30 functions of 4-vectors takes LLVM 3 s (a loop per op; issue 23), of scalars 0.2 s.
    source.write_text("param p: f64\nparam q: f64\nloss " + " + ".join(terms) + "\n")
    aot.build(str(source), str(tmp_path / "functions.so"), dtype=dtype, estimators=("exact",))
    loaded, jit = spadrt.load(str(tmp_path / "functions.so")), spadc.compile_file(str(source), dtype=dtype)
    params = {"p": np.array(-0.2), "q": np.array(-1.1)}
    loaded.set_params(params)
    jit.set_params(params)
    assert loaded.loss() == jit.loss()
    for name, value in jit.grad()[1].items():
        np.testing.assert_array_equal(loaded.grad()[1][name], value)


DIGAMMA_POINTS = [0.3, 1.0, 2.5, 7.9, 33.3, 1e4, -0.5, -2.7]  # both sides of the poles too
POLYGAMMA_RTOL = 1e-12  # against SciPy: both exact to a few ulps (measured 5e-15)
LGAMMA_DIFFERENCE_RTOL = 1e-8  # against a central difference of Python's lgamma (step 1e-5)


def _digamma_model():
    model = spadc.compile_source(f"param p: f64[{len(DIGAMMA_POINTS)}]\ninput w: f64[{len(DIGAMMA_POINTS)}]\n"
                                 "loss sum(w * digamma(p))\n")
    model.params["p"][:] = DIGAMMA_POINTS
    return model, np.array(DIGAMMA_POINTS)


def test_digamma_is_the_derivative_of_pythons_lgamma_and_lgammas_gradient_is_it():
    model, x = _digamma_model()
    values = _values(model, len(x))
    step = 1e-5 * np.maximum(1.0, np.abs(x))
    lgamma = np.vectorize(math.lgamma)
    np.testing.assert_allclose(values, (lgamma(x + step) - lgamma(x - step)) / (2 * step), rtol=LGAMMA_DIFFERENCE_RTOL)
    lgamma_model = spadc.compile_source(f"param p: f64[{len(x)}]\nloss sum(lgamma(p))\n")
    lgamma_model.params["p"][:] = x
    np.testing.assert_array_equal(lgamma_model.grad()[1]["p"], values)


def test_digamma_and_its_derivatives_against_scipy():
    special = _scipy()
    model, x = _digamma_model()
    ones = np.ones(len(x))
    np.testing.assert_allclose(_values(model, len(x)), special.digamma(x), rtol=POLYGAMMA_RTOL)
    np.testing.assert_allclose(model.grad(w=ones)[1]["p"], special.polygamma(1, x), rtol=POLYGAMMA_RTOL)
    np.testing.assert_allclose(model.hvp({"p": ones}, w=ones)["p"], special.polygamma(2, x), rtol=POLYGAMMA_RTOL)
    f32 = spadc.compile_source(f"param p: f64[{len(x)}]\ninput w: f64[{len(x)}]\nloss sum(w * digamma(p))\n",
                               dtype="f32")
    f32.params["p"][:] = x
    np.testing.assert_allclose(_values(f32, len(x)), special.digamma(x), rtol=F32_RTOL)


def test_the_poles_of_digamma_are_nan_and_lgamma_is_infinite_there():
    model = spadc.compile_source("param p: f64[3]\ninput w: f64[3]\nloss sum(w * (digamma(p) + 0.0 * lgamma(p)))\n")
    model.params["p"][:] = [0.0, -1.0, -4.0]
    assert all(math.isnan(v) for v in _values(model, 3))
    lgamma = spadc.compile_source("param p: f64\nloss lgamma(p)\n")
    lgamma.params["p"][...] = -2.0
    assert lgamma.loss() == math.inf


def test_a_square_is_a_multiply_in_the_kernel_and_its_gradient_as_numpy_says():
    """`x ^ 2`'s exponent, and its adjoint's `2 - 1`, reach LLVM as constants, which it folds: no
    call of libm's pow is left in the mixture's kernels (11 in each before, where the constant came
    from a slot of the workspace: a third of a larger mixture's gradient time)."""
    from spadc.backend import jit
    compiled = spadc.api.build_file(example("gmm.spad"))
    for kind in ("grad", "forward"):
        optimised = str(jit.optimise(compiled.function_ir(kind), jit.native_target()))
        assert "@llvm.pow" not in optimised and "@pow(" not in optimised, kind
    text = "param W: f64[3, 4] ~ normal(0, 1)\ninput x: f64[4]\nloss sum([sum(W[k] * x) ^ 2 for k in 0..3]) ^ 2"
    model = spadc.compile_source(text, name="square.spad")
    model.init_params(2)
    w, x = model.params["W"], np.linspace(-1.5, 2.0, 4)
    s = np.sum((w @ x) ** 2)
    loss, grads = model.grad(x=x)
    assert loss == pytest.approx(s ** 2, rel=1e-14)
    np.testing.assert_allclose(grads["W"], 2 * s * 2 * np.outer(w @ x, x), rtol=1e-13)
