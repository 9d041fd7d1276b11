"""The Gaussian mixture example (examples/gmm.spad): its objective against the AD benchmark's GMM
written here in NumPy from its published definition (Srajer et al. 2018), the Wishart constant from
Python's lgamma; its gradient against central differences and the interpreter's (dot product)."""

import math

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import example
from gradcheck import check_dot_product, check_finite_differences

SEED = 20261205
K, D, N_DATA, GAMMA, M = 3, 2, 100, 1.0, 0


def _logsumexp(v):
    top = np.max(v)
    return top + np.log(np.sum(np.exp(v - top)))


def numpy_gmm(params, x):
    alpha, mu, d, L = params["alpha"], params["mu"], params["d"], params["L"]
    terms = []
    for k in range(K):
        Q = np.diag(np.exp(d[k])) + np.tril(L[k], -1)
        terms.append(alpha[k] + np.sum(d[k]) - 0.5 * np.sum((Q @ (x - mu[k])) ** 2))
    n = D + M + 1
    log_multigamma = 0.25 * D * (D - 1) * math.log(math.pi) + sum(math.lgamma(0.5 * n + 0.5 * (1 - j))
                                                                   for j in range(1, D + 1))
    constant = K * (n * D * (math.log(GAMMA) - 0.5 * math.log(2.0)) - log_multigamma)
    prior = 0.5 * GAMMA ** 2 * (np.sum(np.exp(2 * d)) + sum(np.sum(np.tril(L[k], -1) ** 2) for k in range(K))) \
        - M * np.sum(d)
    return -_logsumexp(np.array(terms)) + _logsumexp(alpha) + 0.5 * D * math.log(2 * math.pi) + (prior - constant) / N_DATA


def test_the_mixture_against_numpy_and_its_gradient_against_central_differences():
    rng = np.random.default_rng(SEED)
    model = spadc.compile_file(example("gmm.spad"))
    model.init_params(seed=4)
    params = {k: v.copy() for k, v in model.params.items()}
    for _ in range(3):
        x = rng.standard_normal(D) * 2
        assert model.loss(x=x) == pytest.approx(numpy_gmm(params, x), rel=1e-13)
        _, grads = model.grad(x=x)
        check_finite_differences(lambda p: model.loss(params=p, x=x), params, grads, rng)
        program = spadc.check_text(open(example("gmm.spad")).read(), "gmm.spad")
        check_dot_product(lambda p: evaluate(program, p, {"x": x}).loss, params, grads, rng)


def test_fitting_three_clusters_lowers_the_negative_log_likelihood():
    rng = np.random.default_rng(SEED)
    centres = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
    data = {"x": centres[rng.integers(0, K, 300)] + 0.5 * rng.standard_normal((300, D))}
    model = spadc.compile_file(example("gmm.spad"))
    model.init_params(seed=1)
    before = float(np.mean(model.loss(**data)))
    model.fit(data, epochs=30, optimizer=spadc.Adam(lr=0.05), seed=0)
    after = float(np.mean(model.loss(**data)))
    assert after < before - 1.0, (before, after)
