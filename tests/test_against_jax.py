"""`vjp`, `input_grad` and `jacobian` on every example against JAX's derivatives of the same program
(tests/jax_reference.py: the IR evaluated by JAX, none of spadc's adjoint or tangent rules). The
values are compared too, so that the oracle's forward semantics are checked against the compiled
code's. Skipped without JAX (the optional extra `pip install .[jax]`; CI installs it)."""

import os

import numpy as np
import pytest

import spadc
from spadrt.arguments import with_state

from conftest import EXAMPLES as EXAMPLES_DIRECTORY, LONG, example, example_inputs, skew_vjp

jax = pytest.importorskip("jax", reason="the oracle is JAX (optional extra: pip install .[jax])")
jax.config.update("jax_enable_x64", True)
import jax_reference  # noqa: E402

SEED = 23
BATCH = 2
RTOL = 1e-10  # relative to the largest entry compared: two exact derivatives, rounding apart
VALUE_RTOL = 1e-12  # the oracle's forward values against the compiled code's
# Quick profile: dense layers, convolution and pooling, a loop with a cond, a model with state (the
# long one: every example).
QUICK = ("mlp.spad", "cnn_digits.spad", "newton_cubic.spad", "lr_schedule.spad")


def _examples():
    names = sorted(f for f in os.listdir(EXAMPLES_DIRECTORY) if f.endswith(".spad"))
    return names if LONG else [name for name in names if name in QUICK]


def _close(got, expected, what):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, JAX's {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    worst = float(np.max(np.abs(got - expected), initial=0.0)) / scale
    assert worst <= RTOL, f"{what}: off by {worst:.2e} of its largest entry"


@pytest.mark.parametrize("name", _examples())
def test_vjp_input_grad_and_jacobians_equal_jaxs(name):
    _check(name)


@pytest.mark.parametrize("parts", [("params",), ("inputs",)])
def test_the_check_rejects_a_vjp_off_by_a_little(monkeypatch, parts):
    skew_vjp(monkeypatch, 1e-8, parts)
    with pytest.raises(AssertionError, match=r"off by 1\.0\de-08"):
        _check("mlp.spad")


def _check(name):
    program = spadc.frontend.lower(spadc.frontend.check_file(example(name)))
    model = spadc.compile_file(example(name))
    model.init_params(seed=SEED)
    rng = np.random.default_rng(SEED)
    inputs = example_inputs(model.layout, rng, BATCH)
    states = {s["name"] for s in model.layout.get("state", [])}
    every = with_state(model.layout, inputs, None)  # the states' initial values, shared by the samples
    floats = [i["name"] for i in model.layout["inputs"] if i["dtype"] == "f64" and not i.get("state")]
    outputs = [o["name"] for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]
    batched = bool(inputs)  # a model without inputs runs one sample
    count = BATCH if batched else 1
    cotangents = {"loss": rng.standard_normal(count)}
    forward = model.forward(**inputs)
    for key in outputs:
        cotangents[key] = rng.standard_normal((count, *np.shape(forward.outputs[key])[batched:]))
    f = jax_reference.function(program)
    params = {k: jax.numpy.asarray(v) for k, v in model.params.items()}

    def sample(i):
        return {k: (v if k in states or not batched else np.asarray(v)[i]) for k, v in every.items()}

    def one(value, i):
        return value[i] if batched else value

    result = model.vjp(cotangents if batched else {k: v[0] for k, v in cotangents.items()}, **inputs)
    losses, input_grads = model.input_grad(**inputs)
    jacobians = {target: (model.jacobian(target, "params", **inputs) if model.layout["params"] else None,
                          model.jacobian(target, "inputs", **inputs) if floats else None)
                 for target in ["loss", *outputs]}
    param_sum = {k: np.zeros(np.shape(v)) for k, v in model.params.items()}
    for i in range(count):
        given = sample(i)
        float_given = {k: jax.numpy.asarray(given[k]) for k in floats}
        others = {k: v for k, v in given.items() if k not in floats}

        def g(p, xs, others=others):  # the loss and the visible outputs, as one dict
            loss, outs = f(p, {**xs, **others})
            return {"loss": loss, **{k: outs[k] for k in outputs}}

        values = g(params, float_given)
        for target, value in values.items():
            expected = one(forward.loss if target == "loss" else forward.outputs[target], i)
            np.testing.assert_allclose(value, expected, rtol=VALUE_RTOL, atol=VALUE_RTOL,
                                       err_msg=f"{name}: the oracle's `{target}` is not the model's")
        # Every derivative from one reverse-mode Jacobian of JAX's per sample: rows by target.
        found = jax.jacrev(g, argnums=(0, 1))(params, float_given)  # target -> (by the params, by the inputs)
        by_params = {target: pair[0] for target, pair in found.items()}
        by_inputs = {target: pair[1] for target, pair in found.items()}
        for target, (of_params, of_inputs) in jacobians.items():
            shape = np.shape(values[target])
            if of_params is not None:
                flat = np.concatenate([np.reshape(by_params[target][p["name"]], (*shape, -1))
                                       for p in model.layout["params"]], axis=-1)
                _close(one(of_params, i), flat, f"{name}: the Jacobian of `{target}` by the params, sample {i}")
                for p in model.layout["params"]:  # the VJP: the cotangents against these rows
                    rows = np.reshape(by_params[target][p["name"]], (int(np.prod(shape)), -1))
                    param_sum[p["name"]] += (np.ravel(cotangents[target][i]) @ rows).reshape(p["shape"])
            for k in floats:
                _close(one(of_inputs[k], i), by_inputs[target][k],
                       f"{name}: the Jacobian of `{target}` by `{k}`, sample {i}")
        for k in floats:
            _close(one(input_grads[k], i), by_inputs["loss"][k], f"{name}: input_grad of `{k}`, sample {i}")
            expected = sum(np.tensordot(cotangents[target][i], by_inputs[target][k], axes=np.ndim(values[target]))
                           for target in values)
            _close(one(result.inputs[k], i), expected, f"{name}: vjp's cotangent of input `{k}`, sample {i}")
    for k in param_sum:
        _close(result.params[k], param_sum[k], f"{name}: vjp's cotangent of param `{k}`")
