"""Experiment 4, unrolled computations: TBPTT, truncated ES and PES (ESTIMATORS.md section 8).

    python -m bench.experiments unrolled     (writes docs/results/unrolled.md)

Three parts, on examples/influence_balancing.spad and examples/lr_schedule.spad:
1. Unbiasedness: over an episode of T = 100 steps in truncations of K steps, the sum of PES's
   estimates against the gradient of the whole unroll's loss (quadratic in theta, so the smoothed
   loss has the same gradient; central differences of the whole unroll give it), mean and
   standard error of 400 episodes, K in {1, 5, 20, 100}; truncated ES beside it.
2. Influence balancing (theta* = -1/6): TBPTT with K = 1 and 10, truncated ES and PES with K = 1
   (1000 particles, sigma 0.1, SGD lr 1e-4, 3000 steps in one episode): the final theta and the
   mean loss over 500 steps from the initial state.
3. The learning-rate schedule from theta = (-4, -4): TBPTT, truncated ES and PES (100 particles,
   sigma 0.3, Adam lr 1e-2, 5000 steps, episodes of 10 calls): the final meta-loss.
Memory: the tape each estimator keeps per call (forward-only estimators keep none) and the peak
workspace of the kernel it calls. Every figure is determined by the seeds.
"""

from __future__ import annotations

import os
import sys

import numpy as np

import spadc

from .experiments import source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 100
EPISODES = 400
SEED = 0


def _model(name: str, **consts):
    return spadc.compile_source(source(name, **consts), name=name)


def _whole_unroll_gradient(k: int) -> float:
    """d/dtheta of the sum over an episode of the truncations' losses, by central differences (exact
    for this quadratic) on the model run call after call."""
    model = _model("influence_balancing.spad", K=k)

    def total(theta: float) -> float:
        loss, state = 0.0, None
        for _ in range(T // k):
            out = model.forward(state=state, params={"theta": np.array(theta)})
            loss, state = loss + out.loss, out.state
        return loss

    theta = float(model.params["theta"])
    return (total(theta + 1e-3) - total(theta - 1e-3)) / 2e-3


def unbiasedness() -> str:
    rows = ["| K | whole-unroll gradient | PES: mean of 400 episode sums | standard error | z | truncated ES mean | z |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for k in (1, 5, 20, 100):
        model = _model("influence_balancing.spad", K=k)
        reference = _whole_unroll_gradient(k)
        cells = []
        for estimator in (spadc.PES(sigma=0.1, particles=8), spadc.ES(sigma=0.1, particles=8)):
            sums = []
            for episode in range(EPISODES):
                total, state = 0.0, None
                for call in range(T // k):
                    total += float(model.grad(estimator=estimator, state=state, seed=SEED + episode, step=call)[1]["theta"])
                    state = model.forward(state=state).state
                sums.append(total)
            sums = np.array(sums)
            error = sums.std(ddof=1) / np.sqrt(EPISODES)
            cells.append((sums.mean(), error, abs(sums.mean() - reference) / error))
        (pes, pes_error, pes_z), (es, _, es_z) = cells
        rows.append(f"| {k} | {reference:.4f} | {pes:.4f} | {pes_error:.4f} | {pes_z:.1f} | {es:.4f} | {es_z:.1f} |")
        print(f"  unbiasedness K={k} done", file=sys.stderr)
    return "\n".join(rows)


def _steps_loss(model, steps: int = 500) -> float:
    loss, state = 0.0, None
    for _ in range(steps):
        out = model.forward(state=state)
        loss, state = loss + out.loss, out.state
    return loss / steps


def influence_balancing() -> str:
    rows = ["| estimator | K | final theta | theta + 1/6 | mean loss over 500 steps | tape per call | peak workspace |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for label, k, estimator in (("TBPTT", 1, spadc.Exact()), ("TBPTT", 10, spadc.Exact()),
                                ("truncated ES", 1, spadc.ES(sigma=0.1, particles=1000)),
                                ("PES", 1, spadc.PES(sigma=0.1, particles=1000))):
        model = _model("influence_balancing.spad", K=k)
        model.fit(None, steps=3000, optimizer=spadc.SGD(lr=1e-4), estimator=estimator, horizon=3000, seed=SEED)
        theta = float(model.params["theta"])
        check = _model("influence_balancing.spad", K=1)
        check.set_params({"theta": np.array(theta)})
        stats = model.grad(estimator=estimator, stats=True)[2]
        rows.append(f"| {label} | {k} | {theta:.6g} | {theta + 1 / 6:.2g} | {_steps_loss(check):.4g} | "
                    f"{stats['tape_bytes']:,.0f} B | {stats['workspace_bytes']:,} B |")
        print(f"  influence balancing {label} K={k} done", file=sys.stderr)
    return "\n".join(rows)


def schedule() -> str:
    rows = ["| estimator | final theta | final meta-loss | tape per call | peak workspace |", "|---|---|---:|---:|---:|"]
    for label, estimator in (("TBPTT", spadc.Exact()), ("truncated ES", spadc.ES(sigma=0.3, particles=100)),
                             ("PES", spadc.PES(sigma=0.3, particles=100))):
        model = _model("lr_schedule.spad")
        model.fit(None, steps=5000, optimizer=spadc.Adam(lr=1e-2), estimator=estimator, horizon=10, seed=SEED)
        meta, state = 0.0, None
        for _ in range(10):
            out = model.forward(state=state)
            meta, state = meta + out.loss, out.state
        stats = model.grad(estimator=estimator, stats=True)[2]
        theta = ", ".join(f"{v:.3g}" for v in model.params["theta"])
        rows.append(f"| {label} | ({theta}) | {meta:.1f} | {stats['tape_bytes']:,.0f} B | {stats['workspace_bytes']:,} B |")
        print(f"  schedule {label} done", file=sys.stderr)
    return "\n".join(rows)


def run(write) -> None:
    body = "\n\n".join(["### Unbiasedness over an episode (influence balancing, T = 100)", unbiasedness(),
                        "### Influence balancing (theta* = -1/6)", influence_balancing(),
                        "### Learning-rate schedule (from theta = (-4, -4); the meta-loss starts at 2,488)", schedule()])
    write("unrolled", "Experiment 4: unrolled computations", "python -m bench.experiments unrolled",
          " ".join(__doc__.split("\n\n")[2].split()), body)
