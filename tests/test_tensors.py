"""Tensors of any rank (LANGUAGE.md section 10): `@` with NumPy's broadcasting of leading axes,
`transpose` with a permutation, `reshape` with -1, `concat` and `stack` along any axis, `cumsum`. Values against NumPy; gradients against central differences
and a dot-product test against the interpreter's; mistakes give located errors."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import located_error
from gradcheck import check_dot_product, check_finite_differences

SEED = 20261205
PARAMS = "param A: f64[2, 3, 4]\nparam B: f64[2, 5, 4]\nparam v: f64[4]\n"

CASES = {  # expression: its value in NumPy, from (A, B, v)
    "sum(transpose(A, 2, 0, 1) * transpose(A, 2, 0, 1)[0, 0])":
        lambda A, B, v: np.sum(np.transpose(A, (2, 0, 1)) * np.transpose(A, (2, 0, 1))[0, 0]),
    "sum(transpose(A) * transpose(A, -1, 1, 0))": lambda A, B, v: np.sum(np.transpose(A) ** 2),
    "sum(concat(A, B, axis=1) * concat(B, A, axis=-2))":
        lambda A, B, v: np.sum(np.concatenate([A, B], axis=1) * np.concatenate([B, A], axis=1)),
    "sum(concat(A[0], B[1], A[1] * 2.0) @ v)": lambda A, B, v: np.sum(np.concatenate([A[0], B[1], 2 * A[1]]) @ v),
    "sum(concat(v, v * v, [1.0]) * concat(v * 3.0, v, [2.0]))":
        lambda A, B, v: np.sum(np.concatenate([v, v * v, [1.0]]) * np.concatenate([3 * v, v, [2.0]])),
    "sum(stack(v, v * 2.0, axis=1) @ [1.0, -1.0]) + sum(stack(A, A, axis=2)[1] * A[0, 2])":
        lambda A, B, v: np.sum(np.stack([v, 2 * v], axis=1) @ [1.0, -1.0]) + np.sum(np.stack([A, A], axis=2)[1] * A[0, 2]),
    "sum(stack(A[0], A[1], axis=-1)[2] * stack(v, v, axis=1))":
        lambda A, B, v: np.sum(np.stack([A[0], A[1]], axis=-1)[2] * np.stack([v, v], axis=1)),
    "sum((A @ transpose(B, 0, 2, 1)) ^ 2)": lambda A, B, v: np.sum((A @ np.transpose(B, (0, 2, 1))) ** 2),
    "sum(A @ transpose(A[0]) * A[1, 0:3, 0:3])": lambda A, B, v: np.sum(A @ A[0].T * A[1, 0:3, 0:3]),
    "sum((A @ v) * A[:, :, 0]) + sum(v @ transpose(B, 0, 2, 1))":
        lambda A, B, v: np.sum((A @ v) * A[:, :, 0]) + np.sum(v @ np.transpose(B, (0, 2, 1))),
    "sum(transpose(A, 0, 2, 1)[0] @ A)": lambda A, B, v: np.sum(np.transpose(A, (0, 2, 1))[0] @ A),
    "sum(cumsum(A, axis=1) * A) + sum(cumsum(B, axis=-1) ^ 2) + sum(cumsum(v) * v)":
        lambda A, B, v: np.sum(np.cumsum(A, 1) * A) + np.sum(np.cumsum(B, -1) ** 2) + np.sum(np.cumsum(v) * v),
    "sum(reshape(A, -1) * reshape(A, 24)) + sum(reshape(B, 5, -1)[2] * reshape(v, 2, -1)[1, 0])":
        lambda A, B, v: np.sum(A * A) + np.sum(B.reshape(5, -1)[2] * v.reshape(2, -1)[1, 0]),
}


@pytest.mark.parametrize("expression", sorted(CASES))
def test_values_against_numpy_and_gradients_against_central_differences(expression):
    rng = np.random.default_rng(SEED)
    text = PARAMS + f"loss {expression}\n"
    model = spadc.compile_source(text)
    params = {"A": rng.standard_normal((2, 3, 4)), "B": rng.standard_normal((2, 5, 4)), "v": rng.standard_normal(4)}
    model.set_params(params)
    assert model.loss() == pytest.approx(CASES[expression](**params), rel=1e-12)
    _, grads = model.grad()
    check_finite_differences(lambda p: model.loss(params=p), params, grads, rng)
    program = spadc.check_text(text, "t.spad")
    check_dot_product(lambda p: evaluate(program, p, {}).loss, params, grads, rng)


@pytest.mark.parametrize("expression, message", [
    ("sum(transpose(A, 0, 1))", "the axes of `transpose` must be a permutation of 0..2 for f64[2, 3, 4], got 0, 1"),
    ("sum(transpose(A, 0, 0, 1))", "must be a permutation of 0..2"),
    ("sum(concat(A, B))", "`concat` along axis 0 needs the other axes equal: f64[2, 3, 4] and f64[2, 5, 4]"),
    ("sum(concat(A, v, axis=1))", "`concat` along axis 1 needs the other axes equal"),
    ("sum(concat(v[0], v[1]))", "`concat` joins tensors along an axis; got a scalar (use `stack`)"),
    ("sum(concat(A, B, axis=3))", "axis 3 is out of range for a tensor of rank 3"),
    ("sum(stack(A, B))", "`stack` needs operands of one shape: f64[2, 3, 4] and f64[2, 5, 4]"),
    ("sum(stack(v, v, axis=2))", "axis 2 is out of range for a tensor of rank 2"),
    ("sum(reshape(A, -1, -1))", "a dimension of `reshape` must be at least 1, or one of them -1, got -1"),
    ("sum(reshape(A, 5, -1))", "`reshape` cannot make 24 entries into shape"),
    ("sum(reshape(A, 0, 24))", "a dimension of `reshape` must be at least 1, or one of them -1, got 0"),
    ("sum(cumsum(A))", "`cumsum` of f64[2, 3, 4] needs an `axis`"),
    ("sum(cumsum(v[0]))", "`cumsum` needs a tensor, got f64"),
    ("sum(A @ B)", "cannot multiply f64[2, 3, 4] `@` f64[2, 5, 4]: inner dimensions differ (4 vs 5)"),
    ("sum(A @ reshape(B, 5, 4, 2))", "the leading axes of f64[2, 3, 4] and f64[5, 4, 2] do not broadcast in `@`"),
])
def test_mistakes_are_located_errors(expression, message):
    located_error(PARAMS + f"loss {expression}\n", message, line=4)
