"""Compiled code against the reference interpreter: forward values, gradients, finite differences.

Every primitive appears in at least one program here, and a test fails naming any primitive
without an emitter, an adjoint rule or a test program.
"""

import os

import numpy as np
import pytest

import spadc
from spadc.ad.rules import ADJOINTS
from spadc import passes
from spadc.ad.reverse import gradient
from spadc.api import build
from spadc.backend.emitters import EMITTERS
from spadc.errors import Source
from spadc.ir import primitives
from spadc.ir.core import walk_ops
from spadc.ir.interpret import RunOptions, evaluate

from conftest import example, quick
from gradcheck import SEED, check_dot_product, check_finite_differences, interpreted_gradient

RTOL = 1e-12  # compiled against interpreted values
ATOL = 1e-14

PRELUDE = """
param x: f64[4] ~ normal(0, 1)
param A: f64[3, 4] ~ normal(0, 1)
input v: f64[4]
input k: i64
"""

# Each program exercises some primitives; together they cover every one (checked below).
PRIMITIVE_PROGRAMS = {
    "neg_abs_sign": "sum(-x + abs(x) * sign(x))",
    "exp_log": "sum(exp(x) + log(x * x + 1) + log1p(x * x) + expm1(x) + sqrt(x * x + 1))",
    "trigonometric": "sum(sin(x) + cos(x) + tan(0.3 * x) + tanh(x))",
    "activations": "sum(sigmoid(x) + relu(x) + softplus(x) + floor(x * 3))",
    "inverse_hyperbolic_erf": "sum(asin(0.4 * tanh(x)) + acos(0.3 * tanh(x)) + atan(x) + atan2(x, v + 2.0)"
                              " + sinh(x) * cosh(x) + erf(x) + round(x * 3) + lgamma(x * x + 0.5) + digamma(x * x + 1.0))",
    "conversions": "float(k) * x[0] + float(int(x[1] * 10)) * x[2]",
    "stop_gradient": "sum(stop_gradient(x) * x) + sum(stop_gradient(A))",
    "division": "sum(x / (x * x + 1)) + sum(x // 0.7) + sum(x % 0.7) + sum(abs(x) ^ 1.5) + sum(2 ^ x)",
    "extrema": "sum(max(x, v) + min(x, 0.5))",
    "logic": "sum(where(x < v and not (x >= 1) or x == v, x, -x)) + sum(where(x <= 0 or x > 2 and x != 1, x * x, x))",
    "reductions": "sum(A, axis=0)[1] + prod(A, axis=1)[0] + max(A) + min(A, axis=0)[2] + prod(x)",
    "matmul": "sum(A @ x) + sum(x @ transpose(A)) + (x @ x) + sum(transpose(A) @ A)",
    "softmax": "sum(softmax(A) * A) + logsumexp(x) + sum(log_softmax(x) * v)",
    "indexing": "A[1, k] + sum(A[:, 2]) + sum(x[1:3]) + sum([x[0], x[2], 1.0] * x[1:4])",
    "constructors": "sum(eye(4) @ x) + sum(onehot(k, 4) * x) + sum(fill(2.0, 4) * x)",
    "dropout": "sum(dropout(x, 0.5) * x)",
    "integers": "float(k // 2 + k % 3 - max(k, 1) * min(k, 2) + abs(-k) * sign(k)) * sum(x)",
    "comprehension": "sum([x[i] * x[(i + 1) % 4] for i in 0..4]) + sum(x[i] ^ 2 for i in 0..4)",
    "loop": "",  # written out in program_text
    "while": "",  # written out in program_text
    "updates": "",  # written out in program_text
    "conditional": "sum(if k > 1 then x * x else exp(x)) + (if x[0] > 0 then x[1] else x[2] * A[0, 0])",
    # Under RAD a gated residual (gate_outer_add): `x * x` is kept for A's gradient alone (tanh(x) would be
    # kept anyway for tanh's own adjoint, and is not gated: ESTIMATORS.md section 9).
    "sampled_weights": "sum(tanh(A @ (x * x)))",
    "tensors": ("sum(concat(A, reshape(x, 1, 4), axis=0) * concat(A, A[0:1] * 2.0, axis=0)) + sum(stack(x, x * x, axis=1)"
                " @ [1.0, 2.0]) + sum(transpose(reshape(A, 3, 2, 2), 1, 2, 0)[0] * A[0:2, 0:3]) + sum(reshape(A, -1, 6)[1])"
                " + sum(cumsum(A, axis=1)[1] * x)"),
    "dynamic_slices": "sum(x[k - 1:k + 1] * A[0, k:k + 2]) + sum([sum(A[i, 0:4][i:i + 2]) for i in 0..3])",
    "linear_algebra": ("sum(solve(A[0:3, 0:3] + 3.0 * eye(3), x[0:3] + v[0:3])) + sum(solve(A[0:3, 1:4] @ transpose(A[0:3, 1:4])"
                       " + eye(3), A[0:3, 0:2] * x[0]) * A[0:3, 2:4]) + logdet(A @ transpose(A) + eye(3))"
                       " + sum(cholesky(A[0:3, 0:3] @ transpose(A[0:3, 0:3]) + 2.0 * eye(3)) * A[0:3, 1:4])"
                       " + sum(triu(A[0:3, 1:4], 1) * tril(A[0:3, 0:3], k=-1))"),
    "convolution": ("sum(conv(reshape(A, 1, 3, 4), reshape(x, 1, 1, 2, 2), padding=1) ^ 2) + sum(conv(reshape(A, 2, 6), "
                    "reshape(x, 2, 1, 2), groups=2, stride=2, dilation=2) * v[0:2]) + sum(max_pool(reshape(A * x, 1, 3, 4), 2, "
                    "stride=1, padding=1) * A[0, 1]) + sum(avg_pool(upsample(A, 2), 3, stride=2) * x[2]) + sum(pad(A, 1) * pad(A * x, 1))"
                    # under RAD its input's kept positions alone make the weight gradient (gate_conv_weight_grad:
                    # at keep 0.1, 1 of its 10 padded positions, within fuse.sparse_share on every machine)
                    " + sum(conv(reshape(tanh(A[0:2] * x), 1, 8), reshape(x[0:2], 1, 1, 2), padding=1) * A[0, 0])"),
    "shapes": "sum(reshape(A, 2, 6) * reshape(A, 12)[0:6]) + x[argmax(A, axis=1)[1]] * float(argmax(x))",
    # a stacked weight in a loop: its gradient's index_add(acc, outer(g, h), t) is fused (outer_add_at)
    "stacked": "",  # written out in program_text
}
# stop_gradient is not the true derivative, so finite differences cannot check it: a hand value does.
HAND_GRADIENTS = {"stop_gradient": lambda p: {"x": p["x"], "A": np.zeros_like(p["A"])}}
INPUTS = {"v": np.array([0.3, -1.2, 0.7, 2.0]), "k": 2}


def program_text(name):
    body = PRIMITIVE_PROGRAMS[name]
    if name == "loop":  # a loop whose body reads a param captured from outside the loop
        return PRELUDE + "let h = x\nfor t in 0..5 {\n  h = tanh(A[0:3, 0:3] @ h[0:3] * 0.5 + x[0:3])[0] + h\n}\nloss sum(h * x)"
    if name == "stacked":
        return PRELUDE + ("let S = reshape(A, 3, 2, 2)\nlet h = x[0:2]\nfor t in 0..3 {\n  h = tanh(S[t] @ h + v[0:2])\n}\n"
                          "loss sum(h * x[2:4])")
    if name == "updates":
        return PRELUDE + "let y = x\ny[k] = x[0] * x[1]\ny[1:3] += A[0, 0:2]\nloss sum(y * y)"
    if name == "while":  # trips set by an input (k = 2 of at most 5): central differences see a smooth loss
        return PRELUDE + "let h = x\nlet n = 0\nwhile n < k max 5 {\n  h = tanh(h * 1.5 + A[n])\n  n = n + 1\n}\nloss sum(h * x)"
    return PRELUDE + f"loss {body}"


def compiled(text, name="t.spad"):
    return build(Source(name, text), ".")


def interpreter_loss(program, inputs, options=RunOptions()):
    return lambda params: evaluate(program, params, inputs, options).loss


@pytest.mark.parametrize("name", sorted(PRIMITIVE_PROGRAMS))
def test_primitive_programs(name):
    text = program_text(name)
    model = spadc.compile_source(text, name="t.spad")
    program = spadc.check_text(text, "t.spad")
    params = {k: v.copy() for k, v in model.params.items()}
    expected = evaluate(program, params, INPUTS).loss
    assert model.loss(**INPUTS) == pytest.approx(expected, rel=RTOL, abs=ATOL)
    loss, grads = model.grad(**INPUTS)
    reference_loss, reference = interpreted_gradient(program, params, INPUTS)
    assert loss == pytest.approx(reference_loss, rel=RTOL, abs=ATOL)
    for key in grads:
        np.testing.assert_allclose(grads[key], reference[key], rtol=RTOL, atol=ATOL, err_msg=key)
    if name in HAND_GRADIENTS:
        for key, value in HAND_GRADIENTS[name](params).items():
            np.testing.assert_array_equal(grads[key], value)
        return
    rng = np.random.default_rng(SEED)
    check_finite_differences(lambda p: model.loss(params=p, **INPUTS), params, grads, rng)
    check_dot_product(interpreter_loss(program, INPUTS), params, grads, rng)


def test_every_primitive_has_an_emitter_an_adjoint_rule_and_a_test_program():
    assert not set(primitives.PRIMITIVES) - set(EMITTERS), "no emitter for " + str(set(primitives.PRIMITIVES) - set(EMITTERS))
    missing_rules = sorted(set(primitives.PRIMITIVES) - set(ADJOINTS))
    assert not missing_rules, f"no adjoint rule for: {', '.join(missing_rules)}"
    # Every primitive appears in a program or gradient program that the tests above compile.
    seen = set()
    variants = [(None, None, None), (spadc.RAD(keep=0.5, policy="edges").sampling, None, None),
                (spadc.RAD(keep=0.5).sampling, None, None), (spadc.RAD(keep=0.1).sampling, None, None),
                (spadc.RAD(keep=0.5, policy="products", draw="bernoulli").sampling, "forward", None),
                (None, "gradient", "edges")]
    for name in PRIMITIVE_PROGRAMS:
        program = spadc.frontend.lower(spadc.check_text(program_text(name), "t.spad"))
        seen |= {op.kind for op in walk_ops(program.body)}
        for sampling, score, policy in variants:
            gradient_program = gradient(program, accumulate=True, sampling=sampling, score=score, policy=policy)
            seen |= {op.kind for op in walk_ops(passes.run(gradient_program.program).body)}
    untested = sorted(set(primitives.PRIMITIVES) - seen)
    assert not untested, f"primitives without a compiled test program: {', '.join(untested)}"


# ---- the examples -------------------------------------------------------------------------

EXAMPLE_INPUTS = {
    "rosenbrock.spad": {}, "rastrigin.spad": {}, "ackley.spad": {}, "styblinski_tang.spad": {}, "sphere.spad": {},
    "mlp.spad": {"x": np.random.default_rng(1).standard_normal(64), "label": 7},
    "mlp_import.spad": {"x": np.random.default_rng(2).standard_normal(64), "label": 2},
    "irnn.spad": {"seq": np.random.default_rng(3).standard_normal((28, 28)), "label": 5},
    "reaction_diffusion.spad": {"u0": np.random.default_rng(4).uniform(0, 1, 64),
                                "target": np.random.default_rng(5).uniform(0, 1, 64)},
}


# The interpreter runs reaction-diffusion's 400-step adjoint in 6 s: in the quick profile its gradient
# meets central differences and the dot-product test only.
INTERPRETED_IN_LONG_PROFILE_ONLY = () if os.environ.get("SPADC_LONG") == "1" else ("reaction_diffusion.spad",)


# Quick: one of the five scalar test functions, dense layers imported, a recurrent and a stencil loop.
QUICK_EXAMPLES = ("ackley.spad", "mlp_import.spad", "irnn.spad", "reaction_diffusion.spad")


@pytest.mark.parametrize("name", quick(sorted(EXAMPLE_INPUTS), QUICK_EXAMPLES))
def test_examples_forward_and_gradient(name):
    inputs = EXAMPLE_INPUTS[name]
    model = spadc.compile_file(example(name))
    model.init_params(seed=SEED)
    program = spadc.check_file(example(name))
    params = {k: v.copy() for k, v in model.params.items()}
    result = model.forward(**inputs)
    reference = evaluate(program, params, inputs)
    assert result.loss == pytest.approx(reference.loss, rel=RTOL, abs=ATOL)
    for key, value in reference.outputs.items():
        np.testing.assert_allclose(result.outputs[key], value, rtol=RTOL, atol=ATOL, err_msg=key)
    loss, grads = model.grad(**inputs)
    if name not in INTERPRETED_IN_LONG_PROFILE_ONLY:
        reference_loss, reference_grads = interpreted_gradient(program, params, inputs)
        assert loss == pytest.approx(reference_loss, rel=RTOL, abs=ATOL)
        for key in grads:
            np.testing.assert_allclose(grads[key], reference_grads[key], rtol=1e-10, atol=1e-13, err_msg=key)
    rng = np.random.default_rng(SEED)
    check_finite_differences(lambda p: model.loss(params=p, **inputs), params, grads, rng)
    check_dot_product(lambda p: model.loss(params=p, **inputs), params, grads, rng)


def test_dropout_in_training_matches_the_interpreter_bit_for_bit():
    text = "input x: f64[64]\nparam w: f64[64] = 1\nfor_each = 0\n".replace("for_each = 0\n", "") + \
           "let acc = zeros(64)\nfor t in 0..3 {\n  acc = acc + dropout(x * w, 0.3)\n}\noutput a = acc\nloss sum(acc)"
    model = spadc.compile_source(text, name="d.spad")
    program = spadc.check_text(text, "d.spad")
    x = np.arange(1.0, 65.0)
    for seed, step, offset in [(0, 0, 0), (7, 3, 0), (7, 3, 5)]:
        compiled_out = model.forward(x=x, training=True, seed=seed, step=step, sample_offset=offset).outputs["a"]
        options = RunOptions(training=True, seed=seed, step=step, sample=offset)
        interpreted = evaluate(program, {"w": np.ones(64)}, {"x": x}, options).outputs["a"]
        assert np.array_equal(compiled_out, interpreted)
    assert not np.array_equal(model.forward(x=x, training=True).outputs["a"], 3 * x)
    assert np.array_equal(model.forward(x=x).outputs["a"], 3 * x)


def test_batches_give_per_sample_losses_and_mean_gradients():
    model = spadc.compile_file(example("mlp.spad"))
    rng = np.random.default_rng(SEED)
    xs, labels = rng.standard_normal((6, 64)), rng.integers(0, 10, 6)
    losses = model.loss(x=xs, label=labels)
    assert losses.shape == (6,)
    singles = [model.grad(x=xs[i], label=labels[i]) for i in range(6)]
    np.testing.assert_allclose(losses, [s[0] for s in singles], rtol=RTOL)
    loss, grads = model.grad(x=xs, label=labels)
    assert loss == pytest.approx(np.mean(losses), rel=RTOL)
    for key in grads:
        np.testing.assert_allclose(grads[key], np.mean([s[1][key] for s in singles], axis=0), rtol=1e-12, atol=1e-15)
    shared = model.loss(x=xs[0], label=labels)  # x shared by every sample
    np.testing.assert_allclose(shared, [model.loss(x=xs[0], label=l) for l in labels], rtol=RTOL)


def test_params_override_and_views():
    model = spadc.compile_file(example("rosenbrock.spad"))
    assert model.loss() == pytest.approx(6316.2, rel=RTOL)
    assert model.loss(params={"x": np.ones(10)}) == 0.0
    assert model.loss(params=np.ones(10)) == 0.0
    model.params["x"][:] = 1.0
    assert model.loss() == 0.0
    model.init_params(seed=0)
    assert model.loss() == pytest.approx(6316.2, rel=RTOL)


def test_save_and_load(tmp_path):
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(seed=3)
    before = {k: v.copy() for k, v in model.params.items()}
    model.save(str(tmp_path / "w.npz"))
    model.init_params(seed=4)
    model.load(str(tmp_path / "w.npz"))
    for key in before:
        assert np.array_equal(model.params[key], before[key])


def test_compiles_are_cached():
    text = PRELUDE + "loss sum(x * x)"
    first = compiled(text)
    second = compiled(text)
    assert first is second and first.variant(None)[1] is second.variant(None)[1]


def test_loop_carried_values_that_swap_places():
    # The carried copy must not overwrite one value with the other before reading it.
    text = ("param x: f64[3] ~ normal(0, 1)\nparam y: f64[3] ~ normal(0, 1)\nlet a = x\nlet b = y\n"
            "for t in 0..3 {\n  let c = a\n  a = b\n  b = c * 1.5\n}\nloss sum(a * a) + sum(b * x)")
    model = spadc.compile_source(text, name="swap.spad")
    program = spadc.check_text(text, "swap.spad")
    params = {k: v.copy() for k, v in model.params.items()}
    assert model.loss() == pytest.approx(evaluate(program, params, {}).loss, rel=RTOL)
    loss, grads = model.grad()
    _, reference = interpreted_gradient(program, params, {})
    for key in grads:
        np.testing.assert_allclose(grads[key], reference[key], rtol=RTOL, atol=ATOL)
