"""Benchmark: spadc on Ray (spadc/cluster.py), throughput against workers and the bytes of a step.

    python -m bench.cluster [--rounds 3]

On a Ray instance of this machine (one CPU per worker): an ES gradient of 4,096 particles
(examples/es_digits.spad, a minibatch of 128) and data-parallel `fit` at batch 1,024
(examples/mlp_digits.spad and cnn_digits.spad, the 1,437 training digits, 3 epochs), each with one
worker and with two, timed in turn (`rounds` times each, the fastest kept: a cluster of one and one
of two cannot hold their workers on two CPUs at once), beside the same call in one process on one
core and on both; and Ray's own cost of a round trip to an actor, with and without a gradient-sized
result. The bytes of a
step are what the driver sends each worker (the params, the rows of its chunks) and what it gets
back (chunk losses, the sums of the reduction tree's nodes), counted from the arrays themselves.
Needs Ray (`pip install ".[ray]"`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import contextmanager

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench import time_optimised_code  # noqa: E402
from bench.run import machine  # noqa: E402

PARTICLES, ES_BATCH, ES_STEPS = 4096, 128, 5
FIT_BATCH, FIT_EPOCHS = 1024, 3


def _nbytes(value) -> int:
    """Bytes of the arrays and numbers in a share's arguments or a worker's result (object
    references, the params and a held data set, are counted apart)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 8 if isinstance(value, (int, float)) else 0


class Traffic:
    """Counts the bytes of every distributed call of a cluster (wrapping its `_run`): each share
    carries the params (an object reference every worker reads) and its own arguments."""

    def __init__(self, cluster, flat_bytes: int):
        self.sent = self.received = self.calls = 0
        run = cluster._run

        def counted(shares):
            results = run(shares)
            self.calls += 1
            self.sent += sum(flat_bytes + _nbytes(share[3:]) for share in shares)
            self.received += _nbytes(results)
            return results
        cluster._run = counted


def _es(workers: int | None, model, data) -> tuple[float, Traffic | None]:
    """(steps per second of an ES gradient, the traffic of the distributed calls)."""
    estimator = spadc.ES(sigma=0.1, particles=PARTICLES)
    with _cluster(workers) as cluster:
        traffic = Traffic(cluster, model.flat_params.nbytes) if cluster else None
        options = dict(inputs=data, estimator=estimator, seed=0, threads=2 if workers == "threads" else 1,
                       cluster=cluster)
        model.grad(step=0, **options)  # the library built and loaded, the kernels warm
        if traffic:
            traffic.calls = traffic.sent = traffic.received = 0
        start, steps = time.perf_counter(), ES_STEPS
        for step in range(1, steps + 1):
            model.grad(step=step, **options)
        return steps / (time.perf_counter() - start), traffic


def _fit(workers: int | None, model, data) -> tuple[float, Traffic | None]:
    """(samples per second of `fit`, the traffic of its steps)."""
    with _cluster(workers) as cluster:
        traffic = Traffic(cluster, model.flat_params.nbytes) if cluster else None
        options = dict(batch_size=FIT_BATCH, seed=0, threads=2 if workers == "threads" else 1, cluster=cluster)
        model.fit(data, epochs=1, **options)  # the library built and loaded
        if traffic:
            traffic.calls = traffic.sent = traffic.received = 0
        start = time.perf_counter()
        model.fit(data, epochs=FIT_EPOCHS, **options)
        return len(data["x"]) * FIT_EPOCHS / (time.perf_counter() - start), traffic


@contextmanager
def _cluster(workers):
    """None or "threads": no cluster (one process, on one core or on both); else a Ray of `workers`."""
    if workers in (None, "threads"):
        yield None
        return
    with spadc.Ray(workers=workers) as cluster:
        yield cluster


def _transport(ray, size: int) -> tuple[float, float]:
    """Ray's own cost here: (ms of a round trip to an actor doing nothing, ms of one returning
    `size` float64s), the fastest of 20 rounds of 20 calls."""
    from bench import fastest_in_turn

    @ray.remote(num_cpus=1)
    class Echo:
        def nothing(self):
            return 0

        def vector(self, n):
            return np.ones(n)

    actor = Echo.remote()
    ray.get(actor.nothing.remote())
    times = fastest_in_turn(lambda: ray.get(actor.nothing.remote()), lambda: ray.get(actor.vector.remote(size)),
                            rounds=20, calls=20)
    ray.kill(actor)
    return times[0] * 1e3, times[1] * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    time_optimised_code()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    digits = dict(np.load(os.path.join(ROOT, "examples", "data", "digits_train.npz")))
    es_rows = {k: v[:ES_BATCH] for k, v in digits.items()}
    jobs = [(f"ES, {PARTICLES:,} particles, es_digits", "es_digits.spad", _es, es_rows, "steps/s"),
            (f"fit, mlp_digits, batch {FIT_BATCH:,}", "mlp_digits.spad", _fit, digits, "samples/s"),
            (f"fit, cnn_digits, batch {FIT_BATCH:,}", "cnn_digits.spad", _fit, digits, "samples/s")]
    best: dict = {}
    for _ in range(args.rounds):
        for name, source, run, data, _ in jobs:
            model = spadc.compile_file(os.path.join(ROOT, "examples", source))
            for workers in (None, "threads", 1, 2):
                rate, traffic = run(workers, model, data)
                if rate > best.get((name, workers), (0.0,))[0]:
                    best[(name, workers)] = (rate, traffic, model.flat_params.size)
    mlp_size = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad")).flat_params.size
    round_trip, returned = _transport(ray, mlp_size)
    ray.shutdown()
    print(f"Machine: {machine('one CPU per worker, the driver on the same cores')}; Ray {ray.__version__}.\n")
    print(f"Ray's own cost: a round trip to an actor doing nothing {round_trip:.2f} ms; one returning the digits "
          f"MLP's {mlp_size:,} float64s ({8 * mlp_size:,} bytes) {returned:.2f} ms.\n")
    print("| job | params | one process, one core | one process, two cores | 1 worker | 2 workers | 2 workers / 1 | "
          "bytes per step, sent and received (2 workers) |")
    print("|---|---|---|---|---|---|---|---|")
    columns = (None, "threads", 1, 2)
    for name, _, _, _, unit in jobs:
        rates = {w: best[(name, w)][0] for w in columns}
        _, traffic, size = best[(name, 2)]
        digits_shown = 1 if unit == "steps/s" else 0
        cells = " | ".join(f"{rates[w]:,.{digits_shown}f} {unit}" for w in columns)
        print(f"| {name} | {size:,} | {cells} | {rates[2] / rates[1]:.2f}x | {traffic.sent / traffic.calls:,.0f}, "
              f"{traffic.received / traffic.calls:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
