"""spadc inside JAX (spadc/jax.py): values are the model's own, `jax.grad` through the compiled VJP
meets JAX's own numerical check of orders one and two (and rejects a planted error), and JAX
training loops (by hand, and optax's Adam) reach `Model.fit`'s params. Skipped
without JAX (the optional extra `pip install .[jax]`; CI installs it)."""

import numpy as np
import pytest

import spadc

from conftest import example, example_inputs, skew_vjp

jax = pytest.importorskip("jax", reason="spadc.jax needs JAX (optional extra: pip install .[jax])")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy
from jax.test_util import check_grads  # noqa: E402

import spadc.jax  # noqa: E402

SEED = 13
FIT_RTOL = 1e-8  # a JAX SGD loop against Model.fit's: the same steps, sums in another order
CHECK_EXAMPLES = ("mlp.spad", "irnn.spad", "reaction_diffusion.spad")


def _model(name, **options):
    model = spadc.compile_file(example(name), **options)
    model.init_params(seed=SEED)
    return model


def _float_inputs(model, inputs):
    floats = {spec["name"] for spec in model.layout["inputs"] if spec["dtype"] == "f64"}
    return {k: jnp.asarray(v) for k, v in inputs.items() if k in floats}, {k: v for k, v in inputs.items() if k not in floats}


@pytest.mark.parametrize("name", CHECK_EXAMPLES)
def test_values_and_gradients_are_the_models_and_pass_jaxs_check(name):
    model = _model(name)
    f = spadc.jax.function(model)
    inputs = example_inputs(model.layout, np.random.default_rng(SEED), batch=3)
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    losses, outputs = jax.jit(lambda p: f(p, **inputs))(params)
    forward = model.forward(**inputs)
    np.testing.assert_array_equal(losses, forward.loss)
    for key, value in forward.outputs.items():
        np.testing.assert_array_equal(outputs[key], value)
    grads = jax.jit(jax.grad(lambda p: f(p, **inputs)[0].mean()))(params)
    _, expected = model.grad(**inputs)
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=1e-12, atol=1e-15)
    floats, others = _float_inputs(model, inputs)

    def scalar(p, xs):  # the loss and every float output, so the outputs' cotangents are checked too
        losses, outputs = f(p, **xs, **others)
        return losses.sum() + sum(jnp.sum(jnp.sin(v)) for v in outputs.values())

    check_grads(scalar, (params, floats), order=2, modes=["rev"], eps=1e-6)


def test_the_order_two_check_rejects_a_wrong_second_order(monkeypatch):
    # A negative control: the VJP's derivatives with respect to the params 1% too large fail JAX's
    # check of order two (a projection on random directions, where the params' part is a share).
    from spadrt import derivatives
    real = derivatives.second_order

    def skewed(*args, **kwargs):
        result = real(*args, **kwargs)
        result.params = {k: v * 1.01 for k, v in result.params.items()}
        return result
    monkeypatch.setattr(derivatives, "second_order", skewed)
    model = _model("mlp.spad")
    f = spadc.jax.function(model)
    inputs = example_inputs(model.layout, np.random.default_rng(SEED), batch=3)
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    floats, others = _float_inputs(model, inputs)
    scalar = lambda p, xs: jnp.sum(jnp.sin(f(p, **xs, **others)[1]["logits"]))  # noqa: E731
    check_grads(scalar, (params, floats), order=1, modes=["rev"], eps=1e-6)
    with pytest.raises(AssertionError):
        check_grads(scalar, (params, floats), order=2, modes=["rev"], eps=1e-6)


def test_the_check_rejects_a_wrong_vjp(monkeypatch):
    # A negative control: cotangents 1e-3 too large fail JAX's numerical check (its tolerance: 1e-5).
    skew_vjp(monkeypatch, 1e-3)
    with pytest.raises(AssertionError):
        test_values_and_gradients_are_the_models_and_pass_jaxs_check("mlp.spad")


def test_vmap_maps_the_model_over_an_axis():
    model = _model("mlp.spad")
    f = spadc.jax.function(model)
    x = np.random.default_rng(SEED).standard_normal((4, 64))
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    mapped = jax.vmap(lambda row: f(params, x=row, label=3)[0])(jnp.asarray(x))
    np.testing.assert_array_equal(mapped, model.forward(x=x, label=np.full(4, 3)).loss)


def test_a_jax_training_loop_reaches_fits_params():
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    data = {"x": rng.standard_normal((40, 64)), "label": rng.integers(0, 10, 40)}
    start = {k: v.copy() for k, v in model.params.items()}
    f = spadc.jax.function(model)
    step = jax.jit(jax.grad(lambda p: f(p, **data)[0].mean()))
    params = {k: jnp.asarray(v) for k, v in start.items()}
    for _ in range(5):
        grads = step(params)
        params = {k: params[k] - 0.1 * grads[k] for k in params}
    model.fit(data, epochs=5, batch_size=40, optimizer=spadc.SGD(lr=0.1))  # full batches: five SGD steps
    for key in start:
        np.testing.assert_allclose(params[key], model.params[key], rtol=FIT_RTOL, atol=1e-12)


def test_an_optax_adam_loop_reaches_fits_params_with_adam():
    optax = pytest.importorskip("optax", reason="optax comes with the jax extra (pip install .[jax])")
    model = _model("mlp.spad")
    rng = np.random.default_rng(SEED)
    data = {"x": rng.standard_normal((40, 64)), "label": rng.integers(0, 10, 40)}
    f = spadc.jax.function(model)
    params = {k: jnp.asarray(v.copy()) for k, v in model.params.items()}
    optimiser = optax.adam(0.01)
    state = optimiser.init(params)
    step = jax.jit(jax.grad(lambda p: f(p, **data)[0].mean()))
    for _ in range(5):
        updates, state = optimiser.update(step(params), state)
        params = optax.apply_updates(params, updates)
    model.fit(data, epochs=5, batch_size=40, optimizer=spadc.Adam(lr=0.01))
    for key in params:
        np.testing.assert_allclose(params[key], model.params[key], rtol=FIT_RTOL, atol=1e-12)


def test_mistakes_are_spadc_errors():
    model = _model("mlp.spad")
    f = spadc.jax.function(model)
    with pytest.raises(spadc.SpadcError, match="params must name exactly the model's params"):
        f({"W1": model.params["W1"]}, x=np.zeros(64), label=1)
    wrong = dict(model.params, b1=np.zeros(65))  # (the kernels read one flat buffer: never past its end)
    with pytest.raises(spadc.SpadcError, match=r"param `b1` must have shape \[64\], got \[65\]"):
        jax.jit(lambda p: f(p, x=np.zeros(64), label=1))(wrong)
    # A kernel's run-time check fails the XLA call, with spadc's message and place.
    params = {k: jnp.asarray(v) for k, v in model.params.items()}
    with pytest.raises(Exception, match=r"SpadcError: .*mlp.spad:\d+:\d+: error: run-time error \(sample 1\): "
                                        r"label 99 is out of range for 10 classes"):
        jax.block_until_ready(jax.jit(lambda p: f(p, x=np.zeros((2, 64)), label=np.array([1, 99]))[0])(params))
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(spadc.SpadcError, match="needs 64-bit floats"):
            spadc.jax.function(model)
    finally:
        jax.config.update("jax_enable_x64", True)
