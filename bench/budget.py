"""Experiment 5, one memory budget: exact gradients with replays, RAD or SPAD without, or fewer
samples in flight? (issue 24, point 6)

    python -m bench.experiments budget [--seconds S]     (writes docs/results/budget.md)

The task: an IRNN (as examples/irnn_784.spad) reading 28x28 digits (upsampled from 8x8, bench/
memory.py) seven pixels at a time: T = 112 steps, 64 ReLU units (one pixel a step, 784 steps,
learns too slowly for a table of minutes). The budget: BUDGET bytes of workspace for a gradient
kernel call, on one thread (spadc's `max_memory` bounds exactly that: the tape and every temporary
of the `lanes` samples a call runs side by side). Four ways to train within it:
- exact, with replays: LANES samples side by side, the loop checkpointed to fit;
- RAD and SPAD at keep KEEP: the same LANES samples, taped (their tapes fit);
- exact with fewer samples in flight: the most lanes whose taped exact gradient fits. spadc's
  workspace grows with the samples a call holds, not with the minibatch (a call walks its batch
  `lanes` at a time), so this is its "smaller batch": the minibatch stays BATCH in every arm.

Each trains with Adam (lr LR) on minibatches of BATCH drawn with the seed, for the same wall time:
the steps that arm takes in `--seconds` on the machine that runs the command, measured first
(median of three timings of TIMED_STEPS steps). The steps are written in the table; given them,
training is determined by the seeds, so the losses and accuracies are reproducible and only the
step counts depend on the machine.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import spadc

from .memory import digit_rows

BUDGET = 256 << 10  # bytes of workspace per gradient kernel call
LANES = 10  # samples side by side (spadc's default for the one-pixel IRNN, under its 4 MB cap)
PIXELS = 7  # per step: 112 steps
KEEP = 0.1
BATCH = 32
LR = 1e-3
SEEDS = (0, 1, 2)
TIMED_STEPS = 5
SECONDS = 20.0


STEPS = 784 // PIXELS
MODEL = f"""const T = {STEPS}
const P = {PIXELS}
const H = 64
input seq: f64[T, P]
input label: i64
param Wx: f64[H, P] ~ normal(0, 0.1)
param Wh: f64[H, H] = eye(H)
param b: f64[H]
param Wo: f64[10, H] ~ normal(0, 0.01)
let h = zeros(H)
for t in 0..T {{
  h = relu(Wx @ seq[t] + Wh @ h + b)
}}
output logits = Wo @ h
loss cross_entropy(logits, label)
"""


def pixels(split: str) -> dict:
    rows = digit_rows(split)
    return {"seq": rows["seq"].reshape(len(rows["seq"]), STEPS, PIXELS), "label": rows["label"]}


def few_lanes() -> int:
    """The most samples side by side whose taped exact gradient fits the budget."""
    for lanes in range(LANES - 1, 0, -1):
        try:
            spadc.compile_source(MODEL, name="irnn_112.spad", max_memory=BUDGET, lanes=lanes, checkpoint="none")
            return lanes
        except spadc.SpadcError:
            continue
    raise AssertionError("not even one sample's exact tape fits the budget")


def arms() -> list[tuple[str, object, dict]]:
    """(name, estimator, compile options)."""
    few = few_lanes()
    return [(f"exact, {LANES} lanes, loop checkpointed", spadc.Exact(), dict(lanes=LANES)),
            (f"RAD keep {KEEP}, {LANES} lanes", spadc.RAD(keep=KEEP), dict(lanes=LANES)),
            (f"SPAD keep {KEEP}, {LANES} lanes", spadc.SPAD(keep=KEEP), dict(lanes=LANES)),
            (f"exact, {few} lanes, taped", spadc.Exact(), dict(lanes=few, checkpoint="none"))]


def _step(model, optimizer, estimator, train, rng, seed, step):
    picked = rng.choice(len(train["label"]), BATCH, replace=False)
    options = {} if isinstance(estimator, spadc.SPAD) else {"step": step}
    _, grads, _ = model.flat_grad(estimator=estimator, seed=seed, threads=1, **options,
                                  **{k: v[picked] for k, v in train.items()})
    optimizer.step(model.flat_params, grads, LR)


def seconds_per_step(model, estimator, train) -> float:
    timings = []
    for repeat in range(3):
        model.init_params(0)
        optimizer, rng = spadc.Adam(lr=LR), np.random.default_rng(repeat)
        start = time.perf_counter()
        for step in range(TIMED_STEPS):
            _step(model, optimizer, estimator, train, rng, repeat, step)
        timings.append((time.perf_counter() - start) / TIMED_STEPS)
    return float(np.median(timings))


def train(model, estimator, train_data, test, steps: int, seed: int) -> tuple[float, float]:
    """(test loss, test accuracy) after `steps` steps from the seed's initial params."""
    model.init_params(seed)
    optimizer, rng = spadc.Adam(lr=LR), np.random.default_rng(seed)
    for step in range(steps):
        _step(model, optimizer, estimator, train_data, rng, seed, step)
    logits = model.forward(**test).outputs["logits"]
    loss = float(np.mean(model.loss(**test)))
    return loss, float(np.mean(np.argmax(logits, axis=1) == test["label"]))


def run(write, mean_std, seconds: float = SECONDS):
    train_data, test = pixels("train"), pixels("test")
    rows = ["| arm | lanes | replays | peak workspace | ms per step | steps | test loss | test accuracy | per seed |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, estimator, options in arms():
        model = spadc.compile_source(MODEL, name="irnn_112.spad", max_memory=BUDGET, **options)
        model.init_params(0)
        first = {k: v[:BATCH] for k, v in train_data.items()}
        _, _, stats = model.grad(**first, estimator=estimator, threads=1, stats=True)
        assert stats["peak_workspace_bytes"] <= BUDGET, (name, stats)
        per_step = seconds_per_step(model, estimator, train_data)
        steps = int(seconds / per_step)
        results = [train(model, estimator, train_data, test, steps, seed) for seed in SEEDS]
        lanes = model.layout["variants"]["exact"]["lanes"]
        rows.append(f"| {name} | {lanes} | {stats['forward_replays']} | {stats['peak_workspace_bytes']:,} B | "
                    f"{1000 * per_step:.1f} | {steps:,} | {mean_std([r[0] for r in results])} | "
                    f"{mean_std([100 * r[1] for r in results])}% | "
                    f"{', '.join(f'{100 * r[1]:.1f}%' for r in results)} |")
        print(f"  {name}: {steps} steps done", file=sys.stderr)
    description = (
        f"An IRNN (examples/irnn_784.spad's) reading 28x28 digits (upsampled from 8x8) {PIXELS} pixels at a "
        f"time: {STEPS} steps, 64 units (bench/budget.py). The budget: {BUDGET:,} bytes of workspace per gradient kernel call, one "
        f"thread. Every arm trains with Adam (lr {LR}) on minibatches of {BATCH} for the same wall time, "
        f"{seconds:g} s: its steps were measured on the machine that ran the command (AMD EPYC, 2 cores, "
        f"shared), so only the `steps` column depends on it; the losses and accuracies follow from those "
        f"steps and the seeds ({', '.join(map(str, SEEDS))}: mean ± standard deviation over them, on the "
        f"{len(test['label'])} held-out digits; chance is 10%). `replays`: forward replays of each loop step "
        f"in the gradient (the loop checkpointed to fit); `peak workspace`: what one call allocates, "
        f"from `grad(stats=True)`. Fewer lanes is spadc's \"smaller batch\": a call's workspace holds "
        f"`lanes` samples, whatever the minibatch.")
    write("budget", "Experiment 5: one memory budget, four ways to fit it",
          f"python -m bench.experiments budget --seconds {seconds:g}", description, "\n".join(rows))
