"""Every construct of language 2.0 (LANGUAGE.md section 10) in f32 builds and ahead-of-time
libraries: one program that uses them all, its f32 build against its f64 build, and libraries built
ahead of time (f64; f32 in the long profile) against the JIT of the same type, bit for bit. (Each construct's values
and derivatives against NumPy, JAX and central differences: the tests of its own file.)"""

import numpy as np
import pytest

import spadc
from spadc.ad.reverse import gradient
from spadc.ir.interpret import evaluate

from conftest import LONG

SEED = 20261205
RTOL = 1e-12  # f64 JIT against the interpreter
F32_RTOL = 2e-4  # an f32 build against its f64 build: this program's loss and gradient (condition ~ 10)

PROGRAM = """
param A: f64[3, 4] ~ normal(0, 0.5)
param T3: f64[2, 3, 4] ~ normal(0, 0.5)
param w: f64[4] ~ normal(0, 0.5)
input x: f64[4]
input k: i64

fn pair(a, b) -> (f64[4], f64) {
  return tanh(a) * b, sum(a * a) * b
}

let h, s = pair(x + w, 0.5)
let y = h
y[k % 4] = s
y[1:3] += A[0, 0:2]
let z = 0.0
let n = 0
while z < 1.5 and n < 6 max 8 {
  z = z + sigmoid(w[n % 4]) * 0.5
  n = n + 1
}
let joined = concat(A, reshape(y, 1, 4), axis=0)
let stacked = stack(x, w, axis=1)
let flipped = transpose(T3, 2, 0, 1)
let batched = T3 @ w
let S = A @ transpose(A) + 3.0 * eye(3)
let lin = sum(solve(S, A[:, 0])) + logdet(S) + sum(cholesky(S) * tril(S, -1)) + sum(triu(S))
let stats = var(y) + std(x * w) + huber(y, x, delta=0.5) + bce(y, 0.3)
let elementwise = sum(erf(y) + gelu(y) + silu(y) + elu(y) + leaky_relu(y) + clip(y, -0.5, 0.5) + atan(y)
                      + atan2(y, x * x + 1.0) + sinh(0.3 * y) + cosh(0.3 * y) + asin(0.3 * tanh(y))
                      + acos(0.3 * tanh(y)) + lgamma(y * y + 1.0) + digamma(y * y + 1.0))
let slices = sum(x[k % 2:k % 2 + 2] * w[1:3]) + sum(cumsum(joined, axis=1)[1])
loss lin + stats + elementwise + slices + z * sum(stacked) + sum(flipped[0] * flipped[1]) + sum(batched) + sum(reshape(joined, -1, 8))
"""


def _data(rng, batch=5):
    return {"x": rng.standard_normal((batch, 4)), "k": rng.integers(0, 7, batch)}


def _params(model, rng):
    model.init_params(seed=SEED)
    return {k: v.copy() for k, v in model.params.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One file for every test here: the JIT compiles each type once (the in-process cache)."""
    path = tmp_path_factory.mktemp("language_2") / "all.spad"
    path.write_text(PROGRAM)
    return path


def test_f64_against_the_interpreter_and_f32_against_f64(source):
    rng = np.random.default_rng(SEED)
    f64 = spadc.compile_file(source)
    f32 = spadc.compile_file(source, dtype="f32")
    params, data = _params(f64, rng), _data(rng)
    loss, grads = f64.grad(params=params, **data)
    program = spadc.check_text(PROGRAM, "all.spad")
    sample = {k: v[0] for k, v in data.items()}
    reference = evaluate(gradient(program).program, params, sample)
    one_loss, one = f64.grad(params=params, **sample)
    assert one_loss == pytest.approx(reference.loss, rel=RTOL)
    for name in one:
        np.testing.assert_allclose(one[name], reference.outputs[name], rtol=RTOL, atol=1e-13, err_msg=name)
    loss32, grads32 = f32.grad(params=params, **data)
    assert loss32 == pytest.approx(loss, rel=F32_RTOL)
    for name in grads:
        scale = np.max(np.abs(grads[name]))
        assert np.max(np.abs(grads32[name] - grads[name])) <= F32_RTOL * max(scale, 1.0), name


# In the long profile: test_aot.py checks a library against its JIT in the quick one, and
# test_elementwise.py every function's; the JIT runs this program above, in f64 and f32.
@pytest.mark.skipif(not LONG, reason="the long profile (SPADC_LONG=1, which CI runs): the quick one checks "
                    "libraries against the JIT on other programs")
@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_an_ahead_of_time_library_computes_what_the_jit_does_bit_for_bit(tmp_path, source, dtype):
    import spadrt
    from spadc import aot
    aot.build(str(source), str(tmp_path / "all.so"), dtype=dtype, estimators=("exact",))
    loaded, jit = spadrt.load(str(tmp_path / "all.so")), spadc.compile_file(str(source), dtype=dtype)
    rng = np.random.default_rng(SEED)
    params, data = _params(jit, rng), _data(rng)
    loaded.set_params(params)
    jit.set_params(params)
    np.testing.assert_array_equal(loaded.loss(**data), jit.loss(**data))
    loss, grads = jit.grad(**data)
    loaded_loss, loaded_grads = loaded.grad(**data)
    assert loaded_loss == loss
    for name, value in grads.items():
        np.testing.assert_array_equal(loaded_grads[name], value, err_msg=name)
