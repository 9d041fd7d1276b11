

import os


def time_optimised_code():
    """Every benchmark's first step: its kernels compiled at O3 at once. Under tiering (the
    default; spadc/backend/tiers.py) a kernel runs quick code until it has done enough work, and a
    timed loop could straddle the switch. (Set here, not on import: tests import benchmarks' helpers.)
    bench/run.py's compile rows choose their children's policy themselves."""
    os.environ.setdefault("SPADC_JIT", "optimised")
