"""Persistent ES (ESTIMATORS.md section 8) on an unrolled computation split into truncations.

Oracle: the total loss of the whole unroll is quadratic in theta, so the gradient of its smoothed
version is its exact gradient, which one model unrolling every step gives. The sum of PES's
estimates over an episode must match it within K_SIGMA standard errors, for truncations of K = 1,
2 and 4 steps; the same test rejects truncated ES, which is biased (the power of the test).
"""

import numpy as np
import pytest

import spadc

EPISODES = 300
K_SIGMA = 3.0  # the bound; seeds are fixed, so the test is deterministic
STEPS = 4  # of the whole unroll
SEED = 5

TRUNCATION = """state s: f64[2] = 1.0
param theta: f64 = 0.3
let total = 0.0
for k in 0..{k} {{
  s = 0.5 * s + theta * [1.0, -1.0]
  total = total + 0.5 * (s[0] - 1.0) ^ 2
}}
loss total"""
WHOLE = TRUNCATION.replace("state s: f64[2] = 1.0", "let s = ones(2)").replace("{k}", str(STEPS))


def _episode_sums(model, estimator, k: int) -> np.ndarray:
    sums = []
    for seed in range(EPISODES):
        total, state = 0.0, None  # state=None: a new episode
        for call in range(STEPS // k):
            _, grads = model.grad(estimator=estimator, state=state, seed=SEED + seed, step=call)
            total += grads["theta"]
            state = model.forward(state=state).state
        sums.append(total)
    return np.array(sums)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_pes_summed_over_an_episode_is_unbiased_and_truncated_es_is_not(k):
    truncation = spadc.compile_source(TRUNCATION.format(k=k), name=f"truncation{k}.spad")
    exact = spadc.compile_source(WHOLE.format(), name="whole.spad").grad()[1]["theta"]
    pes = _episode_sums(truncation, spadc.PES(sigma=0.1, particles=8), k)
    z = abs(pes.mean() - exact) / (pes.std(ddof=1) / np.sqrt(EPISODES))
    assert z < K_SIGMA, (pes.mean(), exact, z)
    if k == STEPS:  # one truncation is the whole unroll: truncated ES is ES, unbiased too
        return
    truncated = _episode_sums(truncation, spadc.ES(sigma=0.1, particles=8), k)
    z_truncated = abs(truncated.mean() - exact) / (truncated.std(ddof=1) / np.sqrt(EPISODES))
    assert z_truncated > K_SIGMA, (truncated.mean(), exact, z_truncated)


def test_pes_needs_a_model_with_state():
    model = spadc.compile_source("param x: f64 = 1.0\nloss x * x", name="plain.spad")
    with pytest.raises(spadc.SpadcError, match="PES .* needs a model with `state`"):
        model.grad(estimator=spadc.PES())


def test_pes_trains_in_episodes():
    model = spadc.compile_source(TRUNCATION.format(k=1), name="truncation1.spad")
    start = model.forward().loss
    history = model.fit(None, steps=200, optimizer=spadc.SGD(lr=0.05), estimator=spadc.PES(sigma=0.1, particles=8),
                        horizon=STEPS)
    assert history.steps == 200 and model.forward().loss < start


def test_influence_balancing_pes_finds_the_optimum_and_tbptt_goes_the_wrong_way():
    """examples/influence_balancing.spad, shortened: theta* = -1/6; TBPTT with K = 1 sees only the
    immediate (positive) influence of theta on s[0] and moves theta up, away from it."""
    from conftest import example
    model = spadc.compile_file(example("influence_balancing.spad"))
    model.fit(None, steps=800, optimizer=spadc.SGD(lr=1e-4), estimator=spadc.PES(sigma=0.1, particles=200),
              horizon=800)  # the run: 1000 particles, 3000 steps; 800 steps end within 1e-4 here
    assert abs(model.params["theta"] + 1 / 6) < 1e-3
    model.init_params(0)
    model.fit(None, steps=600, optimizer=spadc.SGD(lr=1e-3), horizon=600)
    assert model.params["theta"] > 1.0


SCHEDULE_BOUND = 600.0  # the bound on the meta-loss (it starts at 2,488 from theta = (-4, -4))


def test_pes_learns_a_learning_rate_schedule():
    """examples/lr_schedule.spad, with a fifth of the issue's 5,000 steps."""
    from conftest import example
    model = spadc.compile_file(example("lr_schedule.spad"))

    def meta_loss():
        total, state = 0.0, None
        for _ in range(10):  # an episode: T / K calls
            out = model.forward(state=state)
            total, state = total + out.loss, out.state
        return total

    assert meta_loss() > 2000
    model.fit(None, steps=1000, optimizer=spadc.Adam(lr=1e-2), estimator=spadc.PES(sigma=0.3, particles=100),
              horizon=10)
    assert meta_loss() < SCHEDULE_BOUND
