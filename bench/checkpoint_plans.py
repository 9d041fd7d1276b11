"""Binomial schedules against nested uniform cuts (issue 24): the least workspace each finds for a
long loop, and a gradient's time and workspace at one budget.

    python -m bench.checkpoint_plans [--steps 1e4,1e5,1e6,1e7] [--budget 2M --timed 1e5]

The loop is bench/long_loops.py's reaction-diffusion (1,024 cells). `least`: the smallest
workspace the planner finds with up to four replays, as its refusal names it, with binomial plans
offered and without them (spadc/backend/budget.py). `timed`: one length compiled under `--budget`
with nested plans only, then binomial ones only (beyond one replay), one core, `SPADC_JIT=optimised`
kernels; the best of `--calls` gradient calls after a warm-up (the same bits either way: the
gradient's sum is printed).
"""

from __future__ import annotations

import argparse
import re
import time
from contextlib import contextmanager

import numpy as np

import spadc
from spadc.backend import budget

from .long_loops import reaction_source

REFUSED = 9000  # bytes: above any one tensor of the model, below any plan of it


@contextmanager
def offered(family: str):
    """The planner offering "nested" plans only (what it offered before binomial ones), "binomial"
    ones only from two replays on, or "both" (as it does); the models compiled meanwhile kept apart
    (a process keeps compiled models by their options, which are the same)."""
    saved = budget._factorisations, budget._binomials, spadc.api._CACHE
    spadc.api._CACHE = type(saved[2])()
    if family == "nested":
        budget._binomials = lambda steps, replays: []
    elif family == "binomial":
        budget._factorisations = lambda steps, levels: saved[0](steps, levels) if levels == 1 else []
    try:
        yield
    finally:
        budget._factorisations, budget._binomials, spadc.api._CACHE = saved


def least(steps: int) -> int:
    try:
        spadc.compile_source(reaction_source(steps), name="rd.spad", max_memory=REFUSED, lanes=1, cache=False)
    except spadc.SpadcError as refusal:
        return int(re.search(r"A budget of ([0-9,]+) bytes", str(refusal)).group(1).replace(",", ""))
    raise AssertionError("a plan fits below any tensor of the model")


def timed(steps: int, limit: str, calls: int):
    model = spadc.compile_source(reaction_source(steps), name="rd.spad", max_memory=limit, lanes=1, cache=False)
    model.init_params(0)
    rng = np.random.default_rng(0)
    inputs = {"u0": rng.uniform(0.2, 0.8, 1024), "target": rng.uniform(0.2, 0.8, 1024)}
    model.grad(**inputs, threads=1)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        _, grads, stats = model.grad(**inputs, threads=1, stats=True)
        best = min(best, time.perf_counter() - start)
    return best, stats, float(np.sum(grads["source"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1e4,1e5,1e6,1e7")
    parser.add_argument("--budget", default="2M")
    parser.add_argument("--timed", default="1e5")
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    lengths = [int(float(s)) for s in args.steps.split(",")]
    print("| steps | least workspace, nested plans (B) | least, nested and binomial (B) |")
    print("|---:|---:|---:|")
    for steps in lengths:
        with offered("nested"):
            nested = least(steps)
        with offered("both"):
            print(f"| {steps:.0e} | {nested:,} | {least(steps):,} |")
    steps = int(float(args.timed))
    print(f"\nT = {steps:.0e} under a budget of {args.budget}, one kind of plan offered "
          f"(best of {args.calls} calls):\n")
    print("| plans | time (s) | workspace (B) | replays | sum of the gradient |")
    print("|---|---:|---:|---:|---:|")
    for family in ("nested", "binomial"):
        with offered(family):
            seconds, stats, total = timed(steps, args.budget, args.calls)
        print(f"| {family} | {seconds:.3f} | {stats['peak_workspace_bytes']:,} | {stats['forward_replays']} "
              f"| {total!r} |")


if __name__ == "__main__":
    main()
