"""Derivatives of anything (INTERFACE.md): `Model.vjp` seeded by cotangents of any float outputs
and of the loss, and `Model.input_grad`. Oracles independent of the reverse sweep under test:
forward mode (a dot-product test against `jvp` for the params' cotangents) and central differences
of the compiled forward pass (for the inputs'); a negative control shows the tests reject a VJP
off by a little."""

import os

import numpy as np
import pytest

import spadc

from conftest import EXAMPLES as EXAMPLES_DIRECTORY, LONG, PROJECTION, example, example_inputs, skew_vjp

SEED = 11
BATCH = 3
DOT_RTOL = 1e-10  # <J^T ct, v> against <ct, J v>: two exact sweeps, rounding apart
STEP = 1e-5  # central differences of the compiled forward pass along an input direction
DIFFERENCE_RTOL = 1e-6  # their truncation (h^2 ~ 1e-10 times third derivatives) and rounding (eps / h)
# Quick profile: dense layers with dropout, a recurrent loop and a stencil loop (the generated
# programs of tests/test_fuzz.py check `vjp` too); the long one: every example.
EXAMPLES = sorted(os.listdir(EXAMPLES_DIRECTORY)) if LONG else ["irnn.spad", "mlp_digits.spad", "reaction_diffusion.spad"]
EXAMPLES = [name for name in EXAMPLES if name.endswith(".spad")]


def _model(name):
    model = spadc.compile_file(example(name))
    model.init_params(seed=SEED)
    return model


def _cotangents(model, rng, n):
    found = {o["name"]: rng.standard_normal((n, *o["shape"])) for o in model.layout["outputs"]
             if o["dtype"] == "f64" and not o.get("hidden")}
    found["loss"] = rng.standard_normal(n)
    return found


def _pairing(model, cotangents, forward_result, tangents):
    """sum over samples of <ct, tangent> over the loss and the seeded outputs."""
    total = float(np.sum(cotangents["loss"] * tangents[0]))
    for name, ct in cotangents.items():
        if name != "loss":
            total += float(np.sum(ct * tangents[1][name]))
    return total


@pytest.mark.parametrize("name", EXAMPLES)
def test_vjp_params_against_forward_mode(name):
    model = _model(name)
    rng = np.random.default_rng(SEED)
    inputs = example_inputs(model.layout, rng, BATCH)
    cotangents = _cotangents(model, rng, BATCH)
    v = {p["name"]: rng.standard_normal(p["shape"]) for p in model.layout["params"]}
    result = model.vjp(cotangents, **inputs)
    product = model.jvp(v, **inputs)
    expected = _pairing(model, cotangents, None, (product.loss_tangent, product.tangents))
    got = sum(float(np.sum(result.params[k] * v[k])) for k in v)
    assert got == pytest.approx(expected, rel=DOT_RTOL, abs=DOT_RTOL)
    forward = model.forward(**inputs)
    np.testing.assert_array_equal(result.loss, forward.loss)
    for key, value in forward.outputs.items():
        np.testing.assert_array_equal(result.outputs[key], value)


def _float_inputs(model):
    return [spec for spec in model.layout["inputs"] if spec["dtype"] == "f64" and not spec.get("state")]


# Central differences along a random input direction cross a ReLU's kink somewhere among the
# ConvNet's 52,000 ReLUs per sample at any step that rounding allows (at 1e-4 the difference is 5%
# off, at 1e-5 1.6e-9 on one draw and 3.5e-4 on another); its input gradient is conv_input_grad's,
# checked against PyTorch (tests/test_conv.py, bench/convnet.py), and with tanh in place of ReLU it
# meets central differences to 7e-11.
KINKED = {"rad_convnet.spad"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_vjp_inputs_against_central_differences(name):
    if name in KINKED:
        pytest.skip(f"{name}: ReLU kinks everywhere, so central differences are no oracle (see KINKED)")
    model = _model(name)
    rng = np.random.default_rng(SEED + 1)
    inputs = example_inputs(model.layout, rng, BATCH)
    cotangents = _cotangents(model, rng, BATCH)
    floats = _float_inputs(model)
    if not floats:
        pytest.skip(f"{name} has no float input")
    u = {spec["name"]: rng.standard_normal((BATCH, *spec["shape"])) for spec in floats}
    result = model.vjp(cotangents, **inputs)
    assert set(result.inputs) == set(u)

    def paired(scale):
        moved = dict(inputs, **{k: inputs[k] + scale * u[k] for k in u})
        out = model.forward(**moved)
        return _pairing(model, cotangents, None, (out.loss, out.outputs))

    numeric = (paired(STEP) - paired(-STEP)) / (2 * STEP)
    analytic = sum(float(np.sum(result.inputs[k] * u[k])) for k in u)
    assert analytic == pytest.approx(numeric, rel=DIFFERENCE_RTOL, abs=DIFFERENCE_RTOL)


def test_input_grad_is_each_samples_own_loss_differentiated():
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    x, label = rng.standard_normal((4, 64)), np.arange(4)
    losses, grads = model.input_grad(x=x, label=label)
    np.testing.assert_array_equal(losses, model.forward(x=x, label=label).loss)
    for s in (0, 3):  # sample s's loss moves with its own x only
        for j in (5, 40):
            up, down = x.copy(), x.copy()
            up[s, j] += STEP
            down[s, j] -= STEP
            numeric = (model.forward(x=up, label=label).loss - model.forward(x=down, label=label).loss) / (2 * STEP)
            expected = np.zeros(4)
            expected[s] = grads["x"][s, j]
            np.testing.assert_allclose(numeric, expected, rtol=DIFFERENCE_RTOL, atol=DIFFERENCE_RTOL)
    single_loss, single = model.input_grad(x=x[2], label=2)  # one sample: no batch axis
    assert single_loss == losses[2] and single["x"].shape == (64,)
    np.testing.assert_array_equal(single["x"], grads["x"][2])


def test_the_params_cotangent_of_the_mean_loss_is_the_gradient_and_threads_change_no_bit():
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    x, label = rng.standard_normal((300, 64)), rng.integers(0, 10, 300)  # three chunks
    results = [model.vjp({"loss": np.full(300, 1 / 300)}, x=x, label=label, threads=t) for t in (1, 2)]
    # Another seeded output (with zeros) takes the seeded variant in place of the loss's own gradient.
    seeded = model.vjp({"loss": np.full(300, 1 / 300), "logits": np.zeros(10)}, x=x, label=label)
    _, grads = model.grad(x=x, label=label)
    for key in grads:
        np.testing.assert_allclose(seeded.params[key], grads[key], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(results[0].params[key], grads[key], rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(results[0].params[key], results[1].params[key])
    np.testing.assert_array_equal(results[0].inputs["x"], results[1].inputs["x"])


def test_a_cotangent_given_once_seeds_every_sample():
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    x, label, ct = rng.standard_normal((3, 64)), np.arange(3), rng.standard_normal(10)
    once = model.vjp({"logits": ct}, x=x, label=label)
    each = model.vjp({"logits": np.tile(ct, (3, 1))}, x=x, label=label)
    np.testing.assert_array_equal(once.inputs["x"], each.inputs["x"])
    for key in once.params:
        np.testing.assert_array_equal(once.params[key], each.params[key])


@pytest.mark.parametrize("part, check, skew", [("inputs", "test_vjp_inputs_against_central_differences", 1e-5),
                                               ("params", "test_vjp_params_against_forward_mode", 1e-8)])
def test_the_checks_reject_a_vjp_off_by_a_little(monkeypatch, part, check, skew):
    # A negative control: each test, given cotangents `skew` (relative) too large.
    skew_vjp(monkeypatch, skew, (part,))
    with pytest.raises(AssertionError):
        globals()[check]("mlp_digits.spad")


@pytest.mark.parametrize("cotangents, message", [
    ({}, "at least one entry"),
    ([1.0], "must be a dict"),
    ({"nope": 1.0}, "a cotangent for `nope`, which is no float output"),
    ({"logits": np.ones(3)}, "must have shape [10]"),
    ({"logits": "a"}, "the cotangent of `logits` must be numeric"),
    ({"loss": np.ones(4)}, "has a batch of 4 samples"),
])
def test_bad_cotangents_are_spadc_errors(cotangents, message):
    model = _model("mlp.spad")
    with pytest.raises(spadc.SpadcError) as info:
        model.vjp(cotangents, x=np.zeros((3, 64)), label=np.arange(3))
    assert message in str(info.value)


def test_an_f32_build_agrees_with_the_f64_one():
    f64, f32 = _model("mlp.spad"), spadc.compile_file(example("mlp.spad"), dtype="f32")
    f32.set_params(f64.params)
    rng = np.random.default_rng(SEED)
    x, label = rng.standard_normal((3, 64)), np.arange(3)
    ct = {"loss": rng.standard_normal(3), "logits": rng.standard_normal((3, 10))}
    a, b = f64.vjp(ct, x=x, label=label), f32.vjp(ct, x=x, label=label)
    np.testing.assert_allclose(b.inputs["x"], a.inputs["x"], rtol=1e-4, atol=1e-5)
    for key in a.params:
        np.testing.assert_allclose(b.params[key], a.params[key], rtol=1e-4, atol=1e-5)


# A camera (angle, shift x, y, focal length) seeing a point, with radial distortion `k` and per-axis
# scales `s`: bundle adjustment's residual in miniature, written again in JAX for its Jacobians.
JAX_RTOL = 1e-10
F32_RTOL = 1e-4  # a float32 build's Jacobian against the float64 one's


def _projection_in_jax(jnp, k, s, cam, pt, obs):
    X = pt[0] * jnp.cos(cam[0]) - pt[1] * jnp.sin(cam[0]) + cam[1]
    Y = pt[0] * jnp.sin(cam[0]) + pt[1] * jnp.cos(cam[0]) + cam[2]
    Z = pt[2] + 3.0
    d = 1.0 + k * (X * X + Y * Y) / (Z * Z)
    return s * cam[3] * d * jnp.stack([X / Z, Y / Z]) - obs


def test_jacobians_of_a_projection_against_jax():
    jax = pytest.importorskip("jax", reason="JAX is the oracle (optional extra: pip install .[jax])")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    model = spadc.compile_source(PROJECTION, name="projection.spad")
    model.set_params({"k": np.array(0.3), "s": np.array([1.1, 0.9])})
    rng = np.random.default_rng(SEED)
    cam, pt, obs = rng.uniform(0.5, 1.5, (5, 4)), rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    inputs_jacobian = model.jacobian("residual", "inputs", cam=cam, pt=pt, obs=obs)
    params_jacobian = model.jacobian("residual", "params", cam=cam, pt=pt, obs=obs)
    assert params_jacobian.shape == (5, 2, 3) and inputs_jacobian["cam"].shape == (5, 2, 4)
    residual = lambda k, s, c, p, o: _projection_in_jax(jnp, k, s, c, p, o)  # noqa: E731
    k, s = jnp.asarray(0.3), jnp.asarray([1.1, 0.9])
    for sample in range(5):
        args = (k, s, cam[sample], pt[sample], obs[sample])
        jk, js, jc, jp, jo = jax.jacrev(residual, argnums=(0, 1, 2, 3, 4))(*args)
        np.testing.assert_allclose(params_jacobian[sample], np.column_stack([jk, js]), rtol=JAX_RTOL, atol=1e-13)
        for name, expected in (("cam", jc), ("pt", jp), ("obs", jo)):
            np.testing.assert_allclose(inputs_jacobian[name][sample], expected, rtol=JAX_RTOL, atol=1e-13)
    one = model.jacobian("residual", "pt", cam=cam[2], pt=pt[2], obs=obs[2])  # one sample: no batch axis
    np.testing.assert_array_equal(one, inputs_jacobian["pt"][2])


def test_the_loss_jacobian_of_each_sample_averages_to_the_gradient():
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    x, label = rng.standard_normal((4, 64)), np.arange(4)
    rows = model.jacobian("loss", "params", x=x, label=label)
    assert rows.shape == (4, model.layout["param_count"])
    np.testing.assert_allclose(rows.mean(axis=0), model.flat_grad(x=x, label=label)[1], rtol=1e-12, atol=1e-16)
    _, grads = model.input_grad(x=x, label=label)
    np.testing.assert_array_equal(model.jacobian("loss", "x", x=x, label=label), grads["x"])


# Forward mode where the inputs are fewer (x: 3 entries against 20), reverse mode for the loss and
# for the params (63 against 20: two kernel calls of SWEEPS_PER_CALL sweeps, the second padded), a
# loop carrying tangents in forward mode and a tape in reverse.
UNROLLED = """input x: f64[3]
input scale: f64
param W: f64[20, 3] ~ normal(0, 0.5)
param c: f64[3]
let h = x
for t in 0..4 {
  h = tanh(h * scale + c)
}
output y = W @ h * scale
loss sum(y * y)
"""


def _unrolled_in_jax(jnp, W, c, x, scale):
    h = x
    for _ in range(4):
        h = jnp.tanh(h * scale + c)
    return W @ h * scale


def test_jacobians_by_forward_and_reverse_mode_against_jax():
    jax = pytest.importorskip("jax", reason="JAX is the oracle (optional extra: pip install .[jax])")
    jax.config.update("jax_enable_x64", True)
    from spadrt import derivatives
    model = spadc.compile_source(UNROLLED, name="unrolled.spad")
    model.init_params(seed=SEED)
    rng = np.random.default_rng(SEED)
    x, scale = rng.standard_normal((4, 3)), rng.uniform(0.5, 1.5, 4)
    W, c = (jax.numpy.asarray(model.params[k]) for k in ("W", "c"))
    by_input = model.jacobian("y", "inputs", x=x, scale=scale)  # 4 columns: forward mode
    by_x = model.jacobian("y", "x", x=x, scale=scale)  # 3 columns: forward mode along x alone
    by_params = model.jacobian("y", "params", x=x, scale=scale)  # 63 columns, 20 rows: reverse mode
    assert 20 > derivatives.SWEEPS_PER_CALL
    assert by_input["x"].shape == (4, 20, 3) and by_input["scale"].shape == (4, 20) and by_params.shape == (4, 20, 63)
    for sample in range(4):
        jw, jc, jx, js = jax.jacrev(lambda *a: _unrolled_in_jax(jax.numpy, *a), argnums=(0, 1, 2, 3))(
            W, c, x[sample], scale[sample])
        np.testing.assert_allclose(by_input["x"][sample], jx, rtol=JAX_RTOL, atol=1e-13)
        np.testing.assert_allclose(by_input["scale"][sample], js, rtol=JAX_RTOL, atol=1e-13)
        np.testing.assert_array_equal(by_x[sample], by_input["x"][sample])
        np.testing.assert_allclose(by_params[sample], np.concatenate([jw.reshape(20, -1), jc], axis=1),
                                   rtol=JAX_RTOL, atol=1e-13)
    losses, grads = model.input_grad(x=x, scale=scale)  # the loss's row: reverse mode, one sweep
    np.testing.assert_allclose(model.jacobian("loss", "x", x=x, scale=scale), grads["x"], rtol=1e-12, atol=1e-14)
    single = spadc.compile_source(UNROLLED, name="unrolled.spad", dtype="f32")  # both modes in float32
    single.set_params(model.params)
    np.testing.assert_allclose(single.jacobian("y", "x", x=x, scale=scale), by_x, rtol=F32_RTOL, atol=F32_RTOL)
    np.testing.assert_allclose(single.jacobian("y", "params", x=x, scale=scale), by_params, rtol=F32_RTOL,
                               atol=F32_RTOL)


@pytest.mark.parametrize("output, wrt, message", [
    ("nope", "inputs", "no float output `nope`"),
    ("logits", "label", 'wrt must be "params", "inputs" or the name of a float input (x)'),
    ("logits", 3, 'wrt must be "params"'),
])
def test_bad_jacobian_requests_are_spadc_errors(output, wrt, message):
    model = _model("mlp.spad")
    with pytest.raises(spadc.SpadcError) as info:
        model.jacobian(output, wrt, x=np.zeros((2, 64)), label=np.arange(2))
    assert message in str(info.value)


# Estimators on a VJP's params' cotangents (the gradient variant of its surrogate `sum <ct, out>`).
KEEP = 0.3


class _VJPAsGradient:
    """A model whose `flat_grad` is the params' cotangent of a VJP: what `spadrt.diagnostics`
    reads to test an estimator's mean against the exact value."""

    def __init__(self, model, cotangents):
        self.model, self.cotangents, self._param_slices = model, cotangents, model._param_slices

    def flat_grad(self, estimator=None, seed=0, step=None, inputs=None):
        result = self.model.vjp(self.cotangents, estimator=estimator, seed=seed, step=step, inputs=inputs)
        return None, np.concatenate([np.ravel(result.params[name]) for name, *_ in self._param_slices])


@pytest.mark.parametrize("kind", ["rad", "spad"])
def test_estimated_vjps_are_unbiased_and_a_biased_control_is_not(kind):
    from spadrt.diagnostics import POOLED_BOUND, diagnose, draws_for_power
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    inputs = {"x": rng.standard_normal((4, 64)), "label": np.arange(4)}
    objective = _VJPAsGradient(model, {"logits": rng.standard_normal((4, 10)), "loss": rng.standard_normal(4)})
    estimator = spadc.RAD(keep=KEEP) if kind == "rad" else spadc.SPAD(keep=KEEP)
    draws = min(20000, max(400, draws_for_power(objective, estimator, seed=SEED, inputs=inputs)))
    report = diagnose(objective, estimator, draws=draws, seed=SEED, inputs=inputs)
    assert any(float(d.stderr.max()) > 0 for d in report.values()), "the estimate should be random"
    for name, d in report.items():
        assert d.max_z <= report.coordinate_bound, f"{name}: a coordinate {d.max_z:.1f} standard errors from exact"
    assert abs(report.pooled_z) <= POOLED_BOUND
    assert not report.biased(1.05).unbiased, f"a 5% bias went unseen in {draws} draws"


def test_a_vjp_of_the_mean_loss_under_rad_is_rads_gradient():
    # The same draws (keyed by seed, step and sample) on the surrogate and on the loss: the same
    # estimate to rounding, and not the exact one (the loss's cotangent alone, equal for every
    # sample, takes the gradient kernel itself; with the outputs' seeded too, the seeded variant).
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    x, label = rng.standard_normal((6, 64)), np.arange(6)
    rad = spadc.RAD(keep=KEEP)
    result = model.vjp({"loss": np.full(6, 1 / 6)}, estimator=rad, seed=5, x=x, label=label)
    seeded = model.vjp({"loss": np.full(6, 1 / 6), "logits": np.zeros(10)}, estimator=rad, seed=5, x=x, label=label)
    _, estimated = model.grad(estimator=rad, seed=5, x=x, label=label)
    _, exact = model.grad(x=x, label=label)
    for key in exact:
        np.testing.assert_allclose(result.params[key], estimated[key], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(seeded.params[key], estimated[key], rtol=1e-12, atol=1e-15)
    assert not all(np.allclose(estimated[k], exact[k]) for k in exact)
    with pytest.raises(spadc.SpadcError, match="ES estimates the loss's gradient only"):
        model.vjp({"loss": 1.0}, estimator=spadc.ES(), x=x, label=label)


class _InputGradAsGradient:
    """A model whose `flat_grad` is `input_grad`'s x (a batch, flat), for spadrt.diagnostics."""

    def __init__(self, model, shape):
        self.model, self._param_slices = model, [("x", 0, int(np.prod(shape)), shape)]

    def flat_grad(self, estimator=None, seed=0, step=0, inputs=None):
        return None, np.ravel(self.model.input_grad(estimator=estimator, seed=seed, step=step, inputs=inputs)[1]["x"])


# Products of activations on the way to the input: under the `products` policy RAD gates their
# taped factors, so the input's gradient is sampled. (A dense network's input gradient reaches x
# through the weights and the ReLU masks alone, none of them gated: RAD leaves it exact.)
GATED_TO_THE_INPUT = """input x: f64[8]
param W: f64[8, 8] ~ normal(0, 0.5)
let h = tanh(W @ x)
let z = tanh(W @ h)
loss sum(h * z * x)
"""


def test_input_grad_under_rad_is_unbiased_and_a_biased_control_is_not():
    from spadrt.diagnostics import POOLED_BOUND, diagnose, draws_for_power
    model = spadc.compile_source(GATED_TO_THE_INPUT, name="gated.spad")
    model.init_params(seed=SEED)
    inputs = {"x": np.random.default_rng(SEED).standard_normal((2, 8))}
    objective, rad = _InputGradAsGradient(model, (2, 8)), spadc.RAD(keep=KEEP, policy="products")
    draws = min(20000, max(400, draws_for_power(objective, rad, seed=SEED, inputs=inputs)))
    report = diagnose(objective, rad, draws=draws, seed=SEED, inputs=inputs)
    assert any(float(d.stderr.max()) > 0 for d in report.values()), "the estimate should be random"
    assert report["x"].max_z <= report.coordinate_bound and abs(report.pooled_z) <= POOLED_BOUND
    assert not report.biased(1.05).unbiased, f"a 5% bias went unseen in {draws} draws"
    with pytest.raises(spadc.SpadcError, match="input_grad takes the exact reverse sweep or RAD"):
        model.input_grad(estimator=spadc.SPAD(), **inputs)


def test_cotangents_with_a_batch_make_a_batch_of_a_model_without_inputs():
    # The inputs (here none) are shared by every sample; a batch of cotangents makes the batch, as
    # an input with one more leading dimension does.
    model = _model("rosenbrock.spad")
    result = model.vjp({"loss": np.array([1.0, 2.0, 3.0])})
    _, grads = model.grad()
    assert np.shape(result.loss) == (3,)
    for key in grads:
        np.testing.assert_allclose(result.params[key], 6.0 * grads[key], rtol=1e-12)
