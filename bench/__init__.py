"""Helpers every benchmark shares: compiled code at O3 from the start, and timing in turn."""

import os
import time


def time_optimised_code():
    """Every benchmark's first step: its kernels compiled at O3 at once. Under tiering (the
    default; spadc/backend/tiers.py) a kernel runs quick code until it has done enough work, and a
    timed loop could straddle the switch. (Set here, not on import: tests import benchmarks' helpers.)
    bench/run.py's compile rows choose their children's policy themselves."""
    os.environ.setdefault("SPADC_JIT", "optimised")


def fastest_in_turn(*runs, rounds: int, calls: int) -> list[float]:
    """Each run's fastest round of `calls` calls (seconds per call), the runs timed in turn `rounds`
    times: a shared machine's load only ever slows a round down, and comes and goes alike for all."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for k, run in enumerate(runs):
            start = time.perf_counter()
            for _ in range(calls):
                run()
            best[k] = min(best[k], (time.perf_counter() - start) / calls)
    return best
