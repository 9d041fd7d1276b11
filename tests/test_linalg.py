"""Linear algebra of version 2.0 (LANGUAGE.md section 10): `solve`, `cholesky`, `logdet`, on the
primitives of spadc/ir/linalg.py. Values against NumPy (f64, f32, interpreted; ahead of time: every
linalg builtin is in the program of tests/test_language_2_builds.py);
gradients against JAX (an optional extra) to 1e-10 and central differences; run-time errors of a
singular or indefinite matrix named at the line, compiled and interpreted; mistakes located.
(Tangents and Hessian products of every primitive: tests/test_forward_mode.py, whose programs of
tests/test_compiled.py include these.)"""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

import isolated
from conftest import located_error
from gradcheck import check_finite_differences

SEED = 20261205
VALUE_RTOL = 1e-11  # against NumPy's LAPACK: other summation orders, well-conditioned matrices
JAX_RTOL = 1e-10  # gradients against JAX's, f64
F32_RTOL = 2e-4  # an f32 build against NumPy in f64 (condition numbers below 30)

PARAMS = "param A: f64[4, 4]\nparam B: f64[4, 2]\ninput b: f64[4]\n"


def _spd(A):
    return A @ A.T + 4.0 * np.eye(4)


CASES = {  # expression: (its value in NumPy, in JAX), from (np or jnp, A, B, b)
    "sum(solve(A + 4.0 * eye(4), b) * b)": lambda m, A, B, b: m.sum(m.linalg.solve(A + 4 * m.eye(4), b) * b),
    "sum(solve(A @ transpose(A) + 4.0 * eye(4), B) * B)":
        lambda m, A, B, b: m.sum(m.linalg.solve(A @ A.T + 4 * m.eye(4), B) * B),
    "sum(cholesky(A @ transpose(A) + 4.0 * eye(4)) * A)": lambda m, A, B, b: m.sum(m.linalg.cholesky(A @ A.T + 4 * m.eye(4)) * A),
    "logdet(A @ transpose(A) + 4.0 * eye(4))": lambda m, A, B, b: m.linalg.slogdet(A @ A.T + 4 * m.eye(4))[1],
    "logdet(A @ transpose(A) + eye(4) * exp(b[0])) * b[1]":
        lambda m, A, B, b: m.linalg.slogdet(A @ A.T + m.eye(4) * m.exp(b[0]))[1] * b[1],
    # cholesky reads (A + A^T) / 2, as JAX's: a non-symmetric operand has the symmetric gradient
    "sum(cholesky(A + transpose(A) + 8.0 * eye(4)) * B[:, 0:1])":
        lambda m, A, B, b: m.sum(m.linalg.cholesky(A + A.T + 8 * m.eye(4)) * B[:, 0:1]),
    "sum(cholesky(A * 0.1 + 4.0 * eye(4)))": lambda m, A, B, b: m.sum(m.linalg.cholesky(
        (A * 0.1 + 4 * m.eye(4) + (A * 0.1 + 4 * m.eye(4)).T) / 2)),
}


def _point(rng):
    return {"A": rng.standard_normal((4, 4)), "B": rng.standard_normal((4, 2))}, {"b": rng.standard_normal(4)}


def _model(expression, dtype="f64"):
    return spadc.compile_source(PARAMS + f"loss {expression}\n", dtype=dtype)


@pytest.mark.parametrize("expression", sorted(CASES))
def test_values_against_numpy_compiled_interpreted_and_f32(expression):
    rng = np.random.default_rng(SEED)
    params, inputs = _point(rng)
    expected = CASES[expression](np, **params, **inputs)
    model = _model(expression)
    assert model.loss(params=params, **inputs) == pytest.approx(expected, rel=VALUE_RTOL)
    program = spadc.check_text(PARAMS + f"loss {expression}\n", "t.spad")
    assert evaluate(program, params, inputs).loss == pytest.approx(expected, rel=VALUE_RTOL)
    assert _model(expression, "f32").loss(params=params, **inputs) == pytest.approx(expected, rel=F32_RTOL)
    _, grads = model.grad(params=params, **inputs)
    check_finite_differences(lambda p: model.loss(params=p, **inputs), params, grads, rng)


def _jax_gradients(params, inputs):
    """Every case's gradient by JAX (jit: 70 MB less than op by op), in a child process."""
    import jax
    jax.config.update("jax_enable_x64", True)
    gradients = {}
    for expression, case in CASES.items():
        loss = lambda A, B, case=case: case(jax.numpy, A, B, inputs["b"])  # noqa: E731
        gradients[expression] = [np.asarray(g) for g in jax.jit(jax.grad(loss, argnums=(0, 1)))(params["A"], params["B"])]
    return gradients


@pytest.fixture(scope="module")
def jax_gradients():
    isolated.require("jax", "JAX (the `jax` extra) is the oracle of these gradients")
    params, inputs = _point(np.random.default_rng(SEED))
    return isolated.in_child(_jax_gradients, params, inputs)


@pytest.mark.parametrize("expression", sorted(CASES))
def test_gradients_against_jax(expression, jax_gradients):
    params, inputs = _point(np.random.default_rng(SEED))
    _, grads = _model(expression).grad(params=params, **inputs)
    for name, reference in zip("AB", jax_gradients[expression]):
        np.testing.assert_allclose(grads[name], reference, rtol=JAX_RTOL, atol=JAX_RTOL, err_msg=name)


def test_the_logdet_gradient_is_the_inverse():
    rng = np.random.default_rng(SEED)
    S = _spd(rng.standard_normal((4, 4)))
    model = spadc.compile_source("param S: f64[4, 4]\nloss logdet(S)\n")
    np.testing.assert_allclose(model.grad(params={"S": S})[1]["S"], np.linalg.inv(S), rtol=VALUE_RTOL)


def test_solve_pivots_rows_and_takes_several_right_hand_sides():
    A = np.array([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])  # a zero first pivot without row swaps
    B = np.arange(6.0).reshape(3, 2)
    model = spadc.compile_source("input A: f64[3, 3]\ninput B: f64[3, 2]\noutput X = solve(A, B)\nloss 0.0\n")
    np.testing.assert_allclose(model.forward(A=A, B=B).outputs["X"], np.linalg.solve(A, B), rtol=VALUE_RTOL)


RUN_TIME_ERRORS = [
    ("solve(A, b)", np.array([[1.0, 2.0, 0, 0], [2.0, 4.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]),
     r"`solve`: the matrix is singular \(no nonzero pivot in column 1\)"),
    ("cholesky(A)", np.diag([1.0, 2.0, -1.0, 3.0]), r"`cholesky`: the matrix is not positive definite \(its pivot 2"),
    ("cholesky(A)", np.full((4, 4), np.nan), r"`cholesky`: the matrix is not positive definite \(its pivot 0"),
]


@pytest.mark.parametrize("call, matrix, message", RUN_TIME_ERRORS)
def test_a_singular_or_indefinite_matrix_is_a_run_time_error_naming_the_line(call, matrix, message):
    text = f"input A: f64[4, 4]\ninput b: f64[4]\nparam p: f64\nlet x = {call}\nloss sum(x) * p\n"
    model = spadc.compile_source(text, name="m.spad")
    with pytest.raises(spadc.SpadcError, match=r"m\.spad:4:9: .*" + message):
        model.loss(A=matrix, b=np.ones(4))
    with pytest.raises(spadc.SpadcError, match=r"m\.spad:4:9: .*" + message):
        model.grad(A=matrix, b=np.ones(4))
    with pytest.raises(spadc.SpadcError, match=message):
        evaluate(spadc.check_text(text, "m.spad"), {"p": np.array(1.0)}, {"A": matrix, "b": np.ones(4)})


def test_constants_fold_and_a_singular_constant_is_a_compile_time_error():
    model = spadc.compile_source("const C = logdet([[4.0, 2.0], [2.0, 3.0]])\nparam p: f64\nloss C * p\n")
    assert model.grad(params={"p": np.array(1.0)})[1]["p"] == pytest.approx(np.log(8.0), rel=1e-15)
    located_error("param p: f64\nloss p * sum(solve([[1.0, 2.0], [2.0, 4.0]], [1.0, 1.0]))\n",
                  "`solve`: the matrix is singular", line=2)


@pytest.mark.parametrize("expression, message", [
    ("sum(solve(A[0:3], b))", "`solve` needs a square matrix, got f64[3, 4]"),
    ("sum(solve(A, b[0:3]))", "`solve(A, b)` with A of f64[4, 4] needs b of 4 rows (a vector or a matrix), got f64[3]"),
    ("sum(solve(A, 1.0))", "needs b of 4 rows"),
    ("sum(cholesky(b))", "`cholesky` needs a square matrix, got f64[4]"),
    ("logdet(B)", "`logdet` needs a square matrix, got f64[4, 2]"),
    ("logdet(A, A)", "`logdet` takes 1 argument"),
])
def test_mistakes_are_located_errors(expression, message):
    located_error(PARAMS + f"loss {expression}\n", message, line=4)


def test_the_adjoint_of_solve_worked_out_by_hand_and_a_wrong_one_rejected():
    """A_bar = -A^-T x_bar x^T; the same without the transpose (a plausible bug) is far from it."""
    rng = np.random.default_rng(SEED)
    params, inputs = _point(rng)
    model = _model("sum(solve(A + 4.0 * eye(4), b) * b)")
    _, grads = model.grad(params=params, **inputs)
    A = params["A"] + 4 * np.eye(4)
    x_bar = inputs["b"]
    b_bar_wrong = np.linalg.solve(A, x_bar)  # no transpose
    wrong = -np.outer(b_bar_wrong, np.linalg.solve(A, inputs["b"]))
    assert np.max(np.abs(wrong - grads["A"])) > 1e-3
    b_bar = np.linalg.solve(A.T, x_bar)
    np.testing.assert_allclose(grads["A"], -np.outer(b_bar, np.linalg.solve(A, inputs["b"])), rtol=VALUE_RTOL)
