"""Layer taps, Fisher estimates, the preconditioners and the curvature tools (CURVATURE.md sections
2 to 4) against NumPy references written out here: the two-layer MLP's per-example gradients by
hand, K-FAC's factors and pi-damped inverses, Shampoo's statistics and roots, Rosenbrock's Hessian."""

import os

import numpy as np
import pytest

import spadc
from spadc import curvature, precondition

from conftest import EXAMPLES, example

SEED = 20261121
EXACT_RTOL = 1e-10  # two computations of one exact quantity
Z_BOUND = 4.0  # standard errors for a mean of seeded draws
DRAWS = 200  # seeds of the Monte Carlo Fisher
DAMPING = 1e-2


def mlp_batch(n=6):
    model = spadc.compile_file(example("mlp.spad"))
    rng = np.random.default_rng(SEED)
    for value in model.params.values():
        value += 0.1 * rng.standard_normal(value.shape)
    return model, {"x": rng.standard_normal((n, 64)), "label": rng.integers(0, 10, n)}


def by_hand(params, x, label):
    """Per sample of mlp.spad, by hand: (a1 with its 1, delta1, a2 with its 1, delta2, softmax)."""
    z1 = x @ params["W1"].T + params["b1"]
    h = np.maximum(z1, 0)
    z2 = h @ params["W2"].T + params["b2"]
    p = np.exp(z2 - z2.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta2 = p - np.eye(10)[label]
    delta1 = (delta2 @ params["W2"]) * (z1 > 0)
    ones = np.ones((len(x), 1))
    return np.hstack([x, ones]), delta1, np.hstack([h, ones]), delta2, p


def test_taps_and_per_example_gradients_by_hand():
    model, batch = mlp_batch()
    a1, d1, a2, d2, _ = by_hand(model.params, batch["x"], batch["label"])
    tapped = curvature.taps(model, **batch)
    assert [(t.weight, t.bias) for t in tapped.layers] == [("W1", "b1"), ("W2", "b2")] and not tapped.others
    for tap, (a, d) in zip(tapped.layers, [(a1, d1), (a2, d2)]):
        np.testing.assert_allclose(tap.a, a, rtol=EXACT_RTOL, atol=1e-14)
        np.testing.assert_allclose(tap.delta, d, rtol=EXACT_RTOL, atol=1e-14)
    per_example = curvature.per_example_gradients(model, tapped)
    for s in range(len(batch["x"])):
        single = model.grad(x=batch["x"][s], label=batch["label"][s])[1]
        for name in single:
            np.testing.assert_allclose(per_example[name][s], single[name], rtol=EXACT_RTOL, atol=1e-14)


def test_layers_without_bias_and_params_outside_layers():
    # W @ x is a layer without bias; s and the recurrent R (applied in a loop) are not layers.
    text = ("input x: f64[3]\nparam W: f64[2, 3] ~ normal(0, 1)\nparam R: f64[2, 2] ~ normal(0, 0.5)\n"
            "param s: f64 = 0.5\nlet h = s * (W @ x)\nfor t in 0..3 {\n  h = tanh(R @ h)\n}\nloss sum(h)")
    model = spadc.compile_source(text, name="scaled.spad")
    x = np.random.default_rng(SEED).standard_normal((4, 3))
    tapped = curvature.taps(model, x=x)
    assert [(t.weight, t.bias) for t in tapped.layers] == [("W", None)] and set(tapped.others) == {"R", "s"}
    per_example = curvature.per_example_gradients(model, tapped)
    for s in range(4):
        single = model.grad(x=x[s])[1]
        for name in single:
            np.testing.assert_allclose(per_example[name][s], single[name], rtol=EXACT_RTOL, atol=1e-15)


def test_empirical_fisher_diagonal_and_kfac_direction_against_numpy():
    model, batch = mlp_batch()
    n = len(batch["x"])
    a1, d1, a2, d2, _ = by_hand(model.params, batch["x"], batch["label"])
    # The empirical Fisher's diagonal from the per-example gradients written out.
    g1 = np.einsum("so,si->soi", d1, a1)
    g2 = np.einsum("so,si->soi", d2, a2)
    expected = {"W1": (g1[:, :, :-1] ** 2).mean(0), "b1": (g1[:, :, -1] ** 2).mean(0),
                "W2": (g2[:, :, :-1] ** 2).mean(0), "b2": (g2[:, :, -1] ** 2).mean(0)}
    diagonal = curvature.fisher_diagonal(model, curvature.taps(model, **batch))
    np.testing.assert_allclose(diagonal, np.concatenate([expected[k].ravel() for k in model.param_names]),
                               rtol=EXACT_RTOL, atol=1e-16)
    # K-FAC: A = mean a a^T, B = mean delta delta^T, pi-damped inverses, B^-1 G A^-1 per layer.
    loss, g = model.flat_grad(**batch)[:2]
    direction = precondition.KFAC(damping=DAMPING).direction(model, g, {"inputs": batch}, 0)
    parts = {}
    for (a, d, weight, bias) in [(a1, d1, "W1", "b1"), (a2, d2, "W2", "b2")]:
        big_a, big_b = a.T @ a / n, d.T @ d / n
        pi = np.sqrt((np.trace(big_a) / len(big_a)) / (np.trace(big_b) / len(big_b)))
        gradient = np.einsum("so,si->oi", d, a) / n
        step = np.linalg.solve(big_b + np.sqrt(DAMPING) / pi * np.eye(len(big_b)), gradient)
        step = np.linalg.solve((big_a + pi * np.sqrt(DAMPING) * np.eye(len(big_a))).T, step.T).T
        parts[weight], parts[bias] = step[:, :-1], step[:, -1]
    np.testing.assert_allclose(direction, np.concatenate([parts[k].ravel() for k in model.param_names]),
                               rtol=EXACT_RTOL, atol=1e-12)


def test_monte_carlo_fisher_is_unbiased_and_the_test_has_power():
    # The exact expectation over labels y ~ softmax: sum_y p(y) g_y^2, against the mean of DRAWS
    # seeded MC diagonals (their total, a scalar). Labels drawn uniformly must fail the same test.
    model, batch = mlp_batch(n=4)
    *_, p = by_hand(model.params, batch["x"], batch["label"])
    expected = 0.0
    for c in range(10):
        label = np.full(4, c)
        per_sample = curvature.taps(model, x=batch["x"], label=label)
        diagonal_each = [curvature.fisher_diagonal(model, _one(per_sample, s)).sum() for s in range(4)]
        expected += np.mean(p[:, c] * np.array(diagonal_each))
    totals = [curvature.fisher_diagonal(model, curvature.taps(model, fisher="mc", seed=k, **batch)).sum()
              for k in range(DRAWS)]
    z = (np.mean(totals) - expected) / (np.std(totals, ddof=1) / np.sqrt(DRAWS))
    assert abs(z) < Z_BOUND, z
    rng = np.random.default_rng(SEED)
    uniform = [curvature.fisher_diagonal(model, curvature.taps(model, x=batch["x"], label=rng.integers(0, 10, 4))).sum()
               for _ in range(DRAWS)]
    z_wrong = (np.mean(uniform) - expected) / (np.std(uniform, ddof=1) / np.sqrt(DRAWS))
    assert abs(z_wrong) > Z_BOUND, z_wrong


def _one(tapped, s):
    """The taps of sample s alone."""
    layers = [curvature.LayerTap(t.weight, t.bias, t.a[s:s + 1], t.delta[s:s + 1]) for t in tapped.layers]
    return curvature.Taps(layers, {k: v[s:s + 1] for k, v in tapped.others.items()}, 1)


def inverse_root(matrix, order):
    """matrix^(-1/order) of a symmetric positive definite matrix, by its SVD."""
    u, s, _ = np.linalg.svd(matrix)
    return (u * s ** (-1.0 / order)) @ u.T


def test_shampoo_against_numpy_over_three_steps():
    model, _ = mlp_batch()
    rng = np.random.default_rng(SEED)
    shampoo = precondition.Shampoo(damping=DAMPING)
    shampoo.start(model)
    statistics = {}
    for step in range(3):
        batch = {"x": rng.standard_normal((5, 64)), "label": rng.integers(0, 10, 5)}
        _, g, _ = model.flat_grad(**batch)
        direction = shampoo.direction(model, g, {"inputs": batch}, step)
        grads = model._named(g)
        expected = []
        for name in model.param_names:
            G = grads[name] if grads[name].ndim == 2 else grads[name][:, None]
            left = statistics.setdefault(("L", name), 1e-12 * np.eye(G.shape[0]))
            left += G @ G.T
            if grads[name].ndim == 2:
                right = statistics.setdefault(("R", name), 1e-12 * np.eye(G.shape[1]))
                right += G.T @ G
                root_l = inverse_root(left + DAMPING * np.eye(len(left)), 4)
                expected.append(root_l @ G @ inverse_root(right + DAMPING * np.eye(len(right)), 4))
            else:  # a vector: one factor, exponent -1/2
                expected.append(inverse_root(left + DAMPING * np.eye(len(left)), 2) @ G)
        np.testing.assert_allclose(direction, np.concatenate([e.ravel() for e in expected]), rtol=EXACT_RTOL, atol=1e-12)


def rosenbrock_hessian(x):
    hessian = np.zeros((len(x), len(x)))
    for i in range(len(x) - 1):
        hessian[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        hessian[i + 1, i + 1] += 200
        hessian[i, i + 1] -= 400 * x[i]
        hessian[i + 1, i] -= 400 * x[i]
    return hessian


def test_newton_and_newton_cg_solve_the_damped_system():
    model = spadc.compile_file(example("rosenbrock.spad"))
    x = 1.0 + 0.05 * np.random.default_rng(SEED).standard_normal(10)  # near the minimum: H is positive definite
    model.set_params(x)
    g = model.flat_grad()[1]
    expected = np.linalg.solve(rosenbrock_hessian(x) + DAMPING * np.eye(10), g)
    newton = precondition.Newton(damping=DAMPING)
    newton.start(model)
    np.testing.assert_allclose(newton.direction(model, g, {}, 0), expected, rtol=1e-9)
    cg = precondition.NewtonCG(damping=DAMPING, iters=40)
    cg.start(model)
    np.testing.assert_allclose(cg.direction(model, g, {}, 0), expected, rtol=1e-6)


def test_newton_refuses_a_model_above_5000_params_naming_the_count():
    model = spadc.compile_file(example("mlp_digits.spad"))
    with pytest.raises(spadc.SpadcError, match="85,002 parameters, more than 5,000"):
        model.fit({"x": np.zeros((2, 64)), "label": np.zeros(2, dtype=int)}, epochs=1, precondition="newton")


def test_identity_preconditioning_is_plain_training_and_kfac_trains_faster():
    model, _ = mlp_batch()
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((128, 64))
    data = {"x": x, "label": np.argmax(x[:, :10], axis=1)}  # learnable labels
    start = model.flat_params.copy()
    finals = {}
    for method in (None, precondition.Identity(), precondition.KFAC(damping=DAMPING)):
        model.set_params(start)
        history = model.fit(data, epochs=3, optimizer=spadc.SGD(lr=0.1), precondition=method)
        finals[type(method).__name__] = (model.flat_params.copy(), history.train_loss[-1])
    assert np.array_equal(finals["NoneType"][0], finals["Identity"][0])
    assert finals["KFAC"][1] < 0.5 * finals["NoneType"][1], finals


def test_top_eigenvalue_and_trace_against_the_hand_hessian():
    model = spadc.compile_file(example("rosenbrock.spad"))
    x = np.random.default_rng(SEED).uniform(-1, 1, 10)
    model.set_params(x)
    eigenvalues = np.linalg.eigvalsh(rosenbrock_hessian(x))
    largest = eigenvalues[np.argmax(np.abs(eigenvalues))]
    assert curvature.top_eigenvalue(model, iters=500, tol=1e-12) == pytest.approx(largest, rel=1e-6)
    estimate, error = curvature.hutchinson_trace(model, 400, seed=1)
    assert abs(estimate - np.trace(rosenbrock_hessian(x))) < Z_BOUND * error


def test_preconditioner_settings_are_checked():
    with pytest.raises(spadc.SpadcError, match="kfac: damping must be"):
        precondition.KFAC(damping=-1)
    with pytest.raises(spadc.SpadcError, match="interval must be an integer >= 1"):
        precondition.Shampoo(interval=0)
    with pytest.raises(spadc.SpadcError, match="unknown preconditioner 'lbfgs'"):
        spadc.compile_file(example("sphere.spad")).fit(None, steps=1, precondition="lbfgs")


def test_the_command_line_trains_with_a_preconditioner_and_prints_curvature(tmp_path):
    from conftest import run_cli as spadc_command

    result = spadc_command("curv", example("rosenbrock.spad"), "--samples", "400", "--iters", "2000",
                           "--out", str(tmp_path / "c.npz"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    saved = np.load(tmp_path / "c.npz")
    hessian = rosenbrock_hessian(np.full(10, -1.2))
    assert float(saved["top_eigenvalue"]) == pytest.approx(np.max(np.linalg.eigvalsh(hessian)), rel=1e-6)
    assert abs(float(saved["trace"]) - np.trace(hessian)) < Z_BOUND * float(saved["trace_stderr"])
    result = spadc_command("train", example("rosenbrock.spad"), "--steps", "20", "--optimizer", "sgd", "--lr", "1",
                           "--precondition", "newton", "--damping", "1e-3", "--quiet")
    assert result.returncode == 0 and "final train loss" in result.stdout, result.stderr
    assert float(result.stdout.split("final train loss")[1].split()[0]) < 1.0  # from 6316 in 20 Newton steps
    result = spadc_command("train", example("mlp_digits.spad"), "--data", os.path.join(EXAMPLES, "data",
                           "digits_test.npz"), "--precondition", "newton", "--quiet")
    assert result.returncode == 1 and "85,002 parameters, more than 5,000" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_long_newton_update_says_how_far_it_is(monkeypatch, capsys):
    """Newton's update is one Hessian product per param (6.7 s per step on mlp.spad's 4,810): a line
    on stderr every PROGRESS_SECONDS, under --quiet too (issue 29). Here every product is 'long'."""
    from spadrt import precondition
    monkeypatch.setattr(precondition, "PROGRESS_SECONDS", 0.0)
    model = spadc.compile_file(example("rosenbrock.spad"))
    model.fit(None, steps=1, optimizer=spadc.SGD(lr=1e-4), precondition=spadc.precondition.Newton())
    lines = capsys.readouterr().err.splitlines()
    count = model.layout["param_count"]
    assert len(lines) == count and lines[-1].startswith(f"newton: building the Hessian, {count} of {count} products")
