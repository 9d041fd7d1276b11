"""Forward mode and the curvature products (CURVATURE.md section 1) against independent oracles:
central differences of the compiled gradient, the reverse-mode gradient (dot-product test), dense
Hessians built column by column, Rosenbrock's Hessian worked out by hand, and for the Gauss-Newton
product the Jacobian products of forward mode with the softmax's Hessian written in NumPy."""

import os

import numpy as np
import pytest

import spadc
from spadc import passes
from spadc.ad.forward import hvp_program, jvp_program
from spadc.ad.reverse import gradient
from spadc.ad.tangents import TANGENTS
from spadc.ir import primitives
from spadc.ir.core import walk_ops
from spadc.ir.interpret import evaluate
from spadc.ir.verify import verify

from conftest import EXAMPLES, example, example_inputs, profile_examples
from test_compiled import INPUTS, PRIMITIVE_PROGRAMS, program_text

SEED = 20261121
HVP_STEP = 1e-6  # central difference of the gradient along v (unit norm): small enough that no relu of
# irnn_784's 50,000 changes side within it (at 1e-5 some do, and the difference is off by 80%)
HVP_RTOL = 1e-6  # |H v - central difference| <= HVP_RTOL * max |central difference| (the bound)
DOT_RTOL = 1e-12  # forward mode's <grad, v> against reverse mode's: both exact up to rounding
PRODUCT_RTOL = 1e-10  # two exact computations of one product (different orders of summation)
BATCH = 3


def perturbed(model, rng):
    """Params moved off their initial values (zeros, identities) so that every curvature term
    shows, by about 0.01 in norm per row: a recurrent matrix keeps nearly its spectral radius
    (irnn_784's identity, over 784 steps)."""
    return {k: v + 0.01 * rng.standard_normal(v.shape) / np.sqrt(v.shape[-1] if v.ndim else 1)
            for k, v in model.params.items()}


def direction(params: dict, rng) -> dict:
    """A random direction of unit norm."""
    v = {k: rng.standard_normal(x.shape) for k, x in params.items()}
    norm = np.sqrt(sum(np.sum(x * x) for x in v.values()))
    return {k: x / norm for k, x in v.items()}


def central_hvp(model, params, v, inputs):
    plus = model.grad(params={k: params[k] + HVP_STEP * v[k] for k in params}, **inputs)[1]
    minus = model.grad(params={k: params[k] - HVP_STEP * v[k] for k in params}, **inputs)[1]
    return {k: (plus[k] - minus[k]) / (2 * HVP_STEP) for k in params}


def flat(values: dict) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in values.values()]) if values else np.zeros(0)


def test_every_primitive_has_a_tangent_rule():
    missing = sorted(set(primitives.PRIMITIVES) - set(TANGENTS))
    assert not missing, f"no tangent rule for: {', '.join(missing)}"


EVERY_EXAMPLE = profile_examples(f for f in os.listdir(EXAMPLES) if f.endswith(".spad"))


@pytest.mark.parametrize("name", EVERY_EXAMPLE)
def test_forward_mode_and_hvp_on_every_example(name):
    model = spadc.compile_file(example(name))
    rng = np.random.default_rng(SEED)
    params = perturbed(model, rng)
    inputs = example_inputs(model.layout, rng)
    v = direction(params, rng)
    # Dot-product test: forward mode's directional derivative is reverse mode's <grad, v>.
    result = model.jvp(v, params=params, **inputs)
    loss, grads = model.grad(params=params, **inputs)
    np.testing.assert_allclose(result.loss, model.loss(params=params, **inputs), rtol=1e-15)
    dot = float(flat(grads) @ flat(v))
    assert abs(np.mean(result.loss_tangent) - dot) <= DOT_RTOL * max(abs(dot), 1e-300) + 1e-300, (name, dot)
    # H v against central differences of the compiled gradient.
    hv = model.hvp(v, params=params, **inputs)
    reference = flat(central_hvp(model, params, v, inputs))
    scale = max(np.max(np.abs(reference), initial=0.0), 1e-300)
    assert np.max(np.abs(flat(hv) - reference), initial=0.0) <= HVP_RTOL * scale, name


def test_output_tangents_match_central_differences():
    model = spadc.compile_file(example("irnn.spad"))
    rng = np.random.default_rng(SEED)
    params, inputs = perturbed(model, rng), example_inputs(model.layout, rng)
    v = {k: rng.standard_normal(x.shape) for k, x in params.items()}
    result = model.jvp(v, params=params, **inputs)
    h = 1e-6
    plus = model.forward(params={k: params[k] + h * v[k] for k in params}, **inputs).outputs
    minus = model.forward(params={k: params[k] - h * v[k] for k in params}, **inputs).outputs
    assert set(result.tangents) == {n for n, x in result.outputs.items() if x.dtype == np.float64} != set()
    for key, tangent in result.tangents.items():
        np.testing.assert_allclose(tangent, (plus[key] - minus[key]) / (2 * h), rtol=1e-6, atol=1e-8, err_msg=key)


def test_forward_and_reverse_mode_transpose_each_other_on_outputs():
    # <u, J v> = <J^T u, v> for the Jacobian of an output: J^T u is reverse mode on the loss
    # sum(u * logits), u an input of the model.
    text = open(example("mlp.spad")).read().replace("loss cross_entropy(logits, label)",
                                                       "input u: f64[C]\nloss sum(u * logits)")
    model = spadc.compile_source(text, name="mlp_vjp.spad")
    rng = np.random.default_rng(SEED)
    params = perturbed(model, rng)
    x, u = rng.standard_normal(64), rng.standard_normal(10)
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    jv = model.jvp(v, params=params, x=x, u=u, label=0).tangents["logits"]
    _, jtu = model.grad(params=params, x=x, u=u, label=0)
    assert float(u @ jv) == pytest.approx(float(flat(jtu) @ flat(v)), rel=DOT_RTOL)


def test_rosenbrock_hessian_by_hand():
    model = spadc.compile_file(example("rosenbrock.spad"))
    x = np.random.default_rng(SEED).uniform(-1.5, 1.5, 10)
    hessian = np.zeros((10, 10))  # f = sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2
    for i in range(9):
        hessian[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        hessian[i + 1, i + 1] += 200
        hessian[i, i + 1] -= 400 * x[i]
        hessian[i + 1, i] -= 400 * x[i]
    columns = np.stack([model.hvp(np.eye(10)[j], params=x)["x"] for j in range(10)], axis=1)
    np.testing.assert_allclose(columns, hessian, rtol=PRODUCT_RTOL, atol=1e-9)


def test_hvp_against_a_dense_hessian_built_column_by_column():
    # The columns by central differences of the compiled gradient along each coordinate; H v then
    # agrees for random v, and H is symmetric (the hvp kernel's columns too).
    model = spadc.compile_file(example("mlp_import.spad"))
    rng = np.random.default_rng(SEED)
    params = perturbed(model, rng)
    inputs = example_inputs(model.layout, rng)
    size = model.layout["param_count"]
    base = flat(params)
    columns = []
    for j in rng.choice(size, 40, replace=False):  # 40 columns of the Hessian
        e = np.zeros(size)
        e[j] = 1.0
        hv = model.flat_hvp(e, params=base, **inputs)[2]
        fd = flat(central_hvp(model, params, model._named(e), inputs))
        assert np.max(np.abs(hv - fd)) <= HVP_RTOL * max(np.max(np.abs(fd)), 1e-300)
        columns.append((j, hv))
    for (i, column_i), (j, column_j) in zip(columns, columns[1:]):
        assert column_i[j] == pytest.approx(column_j[i], rel=1e-9, abs=1e-12)  # symmetry


def test_hvp_of_the_mean_loss_and_the_gradient_beside_it():
    model = spadc.compile_file(example("mlp.spad"))
    rng = np.random.default_rng(SEED)
    inputs = example_inputs(model.layout, rng, batch=70)  # three chunks, two threads
    v = rng.standard_normal(model.layout["param_count"])
    loss, g, hv = model.flat_hvp(v, threads=2, **inputs)
    single = [model.flat_hvp(v, x=inputs["x"][s], label=inputs["label"][s])[2] for s in range(70)]
    np.testing.assert_allclose(hv, np.mean(single, axis=0), rtol=1e-12, atol=1e-14)
    assert np.array_equal(hv, model.flat_hvp(v, threads=1, **inputs)[2])  # the same bits on 1 and 2 threads
    reference_loss, reference_g, _ = model.flat_grad(**inputs)
    assert loss == reference_loss and np.array_equal(g, reference_g)


def test_tangents_through_sampled_gradient_programs():
    # The path-sampling primitives' tangent rules: a RAD gradient program is a smooth function of
    # the params for a fixed key; its jvp (interpreted) against central differences of it.
    text = program_text("sampled_weights")
    program = spadc.frontend.lower(spadc.check_text(text, "t.spad"))
    rng = np.random.default_rng(SEED)
    params = {d.name: rng.standard_normal(d.value.type.shape) for d in program.params}
    v = {k: rng.standard_normal(x.shape) for k, x in params.items()}
    for policy in ("weights", "edges"):
        sampled = gradient(program, sampling=spadc.RAD(keep=0.5, policy=policy).sampling).program
        kinds = {op.kind for op in walk_ops(sampled.body)}
        assert kinds & {"gate_pack", "gate_mask"}, policy
        linear = jvp_program(sampled)
        verify(linear)
        tangents = {"_tangent." + k: x for k, x in v.items()}
        out = evaluate(linear, params, {**INPUTS, **tangents}).outputs
        h = 1e-6
        plus = evaluate(sampled, {k: params[k] + h * v[k] for k in params}, INPUTS).outputs
        minus = evaluate(sampled, {k: params[k] - h * v[k] for k in params}, INPUTS).outputs
        for key in params:
            np.testing.assert_allclose(out["_tangent." + key], (plus[key] - minus[key]) / (2 * h), rtol=1e-6,
                                       atol=1e-8, err_msg=(policy, key))


@pytest.mark.parametrize("name", sorted(PRIMITIVE_PROGRAMS))
def test_hvp_programs_of_every_primitive(name):
    # Interpreted forward-over-reverse against central differences of the interpreted gradient:
    # every primitive's tangent rule, through the adjoint rules of every primitive.
    program = spadc.frontend.lower(spadc.check_text(program_text(name), "t.spad"))
    exact = gradient(program, accumulate=True)
    exact.program = passes.run(exact.program)
    product = hvp_program(exact)
    verify(product.program)
    rng = np.random.default_rng(SEED)
    params = {d.name: rng.standard_normal(d.value.type.shape) for d in program.params}
    v = {k: rng.standard_normal(x.shape) for k, x in params.items()}
    zeros = {f"{k}.grad": np.zeros_like(x) for k, x in params.items()}
    feed = {**INPUTS, **zeros, **{"_tangent." + k: x for k, x in v.items()},
            **{"_hvp." + k: np.zeros_like(x) for k, x in params.items()}}
    out = evaluate(product.program, params, feed).outputs

    def grad_at(step):
        return evaluate(exact.program, {k: params[k] + step * v[k] for k in params}, {**INPUTS, **zeros}).outputs

    plus, minus = grad_at(HVP_STEP), grad_at(-HVP_STEP)
    reference = np.concatenate([np.ravel((plus[k] - minus[k]) / (2 * HVP_STEP)) for k in params])
    if name == "stop_gradient":  # it stops derivatives of every order, as in JAX: the gradient x
        reference = np.zeros_like(reference)  # = stop_gradient(x) has derivative 0, not 1
    hv = np.concatenate([np.ravel(out["_hvp." + k]) for k in params])
    assert np.max(np.abs(hv - reference)) <= 1e-6 * max(np.max(np.abs(reference)), 1.0), name


# ---- the Gauss-Newton product --------------------------------------------------------------

def softmax_hessian(logits):
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return np.diag(p) - np.outer(p, p)


def test_ggn_against_forward_mode_jacobian_products():
    # w^T G v = mean over samples of (J w)^T H_out (J v), the Jacobian products from forward mode.
    model = spadc.compile_file(example("mlp.spad"))
    rng = np.random.default_rng(SEED)
    params = perturbed(model, rng)
    inputs = example_inputs(model.layout, rng, batch=5)
    v, w = (rng.standard_normal(model.layout["param_count"]) for _ in range(2))
    gv = model.flat_ggn_vp(v, params=params, **inputs)
    jv = model.jvp(v, params=params, **inputs)
    jw = model.jvp(w, params=params, **inputs).tangents["logits"]
    expected = np.mean([jw[s] @ softmax_hessian(jv.outputs["logits"][s]) @ jv.tangents["logits"][s] for s in range(5)])
    assert float(w @ gv) == pytest.approx(expected, rel=PRODUCT_RTOL)
    assert float(v @ gv) > 0  # positive semi-definite (and here not degenerate)


@pytest.mark.parametrize("loss", ["cross_entropy(W @ x + b, label)", "mse(W @ x + b, y)"])
def test_ggn_is_the_hessian_of_a_model_linear_in_its_params(loss):
    text = f"input x: f64[5]\ninput label: i64\ninput y: f64[3]\nparam W: f64[3, 5] ~ normal(0, 1)\nparam b: f64[3]\nloss {loss}"
    model = spadc.compile_source(text, name="linear.spad")
    rng = np.random.default_rng(SEED)
    inputs = {"x": rng.standard_normal((4, 5)), "label": np.array([0, 2, 1, 2]), "y": rng.standard_normal((4, 3))}
    v = rng.standard_normal(model.layout["param_count"])
    np.testing.assert_allclose(model.flat_ggn_vp(v, **inputs), model.flat_hvp(v, **inputs)[2], rtol=PRODUCT_RTOL,
                               atol=1e-13)


def test_ggn_needs_a_cross_entropy_or_mse_loss():
    model = spadc.compile_file(example("rosenbrock.spad"))
    with pytest.raises(spadc.SpadcError, match="cross_entropy.*mse"):
        model.ggn_vp(np.ones(10))


def test_a_bad_direction_is_an_error_naming_it():
    model = spadc.compile_file(example("mlp.spad"))
    x = np.zeros(64)
    with pytest.raises(spadc.SpadcError, match="direction v: a flat params array must have 4810 entries"):
        model.hvp(np.ones(3), x=x, label=0)
    with pytest.raises(spadc.SpadcError, match="direction v: unknown param `W9`"):
        model.jvp({"W9": 1.0}, x=x, label=0)
    with pytest.raises(spadc.SpadcError, match="direction v is missing"):
        model.ggn_vp(None, x=x, label=0)
