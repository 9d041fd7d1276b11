"""Benchmark: spadc on Ray (spadc/cluster.py), throughput against workers and the bytes of a step.

    python -m bench.cluster [--rounds 3]

On a Ray instance of this machine (one CPU per worker): an ES gradient of 4,096 particles
(examples/es_digits.spad, a minibatch of 128) and data-parallel `fit` at batch 1,024
(examples/mlp_digits.spad and cnn_digits.spad, the 1,437 training digits, 30 epochs, the fit's
start included: the data and params sent and the workers' run begun, 12-17 ms, about a twentieth
of a 30-epoch fit of the MLP), each with one worker and with two, timed in turn (`rounds` times
each, the fastest kept: a cluster of one and one of two cannot hold their workers on two CPUs at
once), beside the same call in one process on one core and on both; and Ray's own cost of a round
trip to an actor, with and without a gradient-sized result, and the workers' own exchanges of a
step. The bytes of a step are counted from the arrays themselves: for ES, what the driver sends
each worker (the params, the rows) and gets back (the sums of the reduction tree's nodes); for
`fit`, what the driver sends (each step's row indices, the rows counted after each epoch, the
optimiser's settings), gets back (the state's shares, at the end) and what the workers send each
other (their chunks' sums cut to each other's run of the params, then their runs stepped,
spadrt/peers.py).
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
from spadc.cluster_training import DataParallel, nbytes  # noqa: E402

PARTICLES, ES_BATCH, ES_STEPS = 4096, 128, 5
FIT_BATCH, FIT_EPOCHS = 1024, 30


class Traffic:
    """Counts the bytes of a cluster's calls: those of `Ray.estimate` (wrapping its `_run`: each
    share carries the params, an object reference every worker reads, and its own arguments), and
    those a data-parallel `fit` counts itself (spadc/cluster_training.py: the driver's rows and
    settings out, the state's shares back, the chunk sums the workers send each other)."""

    def __init__(self, cluster, flat_bytes: int):
        self.sent = self.received = self.steps = 0
        self.fits = []  # each data-parallel fit's own count (DataParallel.traffic)
        run = cluster._run

        def counted(shares):
            results = run(shares)
            self.steps += 1
            self.sent += sum(flat_bytes + nbytes(share[3:]) for share in shares)
            self.received += nbytes(results)
            return results
        cluster._run = counted
        self._close = close = DataParallel.close

        def closing(trainer):
            self.fits.append(trainer.traffic)
            return close(trainer)
        DataParallel.close = closing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        DataParallel.close = self._close

    def reset(self):
        self.sent = self.received = self.steps = 0
        self.fits = []

    def per_step(self) -> tuple[float, float, float]:
        """(bytes the driver sent, received, the workers sent each other) per step."""
        steps = self.steps + sum(fit["steps"] for fit in self.fits)
        sent = self.sent + sum(fit["to workers"] for fit in self.fits)
        received = self.received + sum(fit["from workers"] for fit in self.fits)
        return sent / steps, received / steps, sum(fit["between workers"] for fit in self.fits) / steps


def _es(workers: int | None, model, data) -> tuple[float, Traffic | None]:
    """(steps per second of an ES gradient, the traffic of the distributed calls)."""
    estimator = spadc.ES(sigma=0.1, particles=PARTICLES)
    with _cluster(workers, model.flat_params.nbytes) as (cluster, traffic):
        options = dict(inputs=data, estimator=estimator, seed=0, threads=2 if workers == "threads" else 1,
                       cluster=cluster)
        model.grad(step=0, **options)  # the library built and loaded, the kernels warm
        if traffic:
            traffic.reset()
        start, steps = time.perf_counter(), ES_STEPS
        for step in range(1, steps + 1):
            model.grad(step=step, **options)
        return steps / (time.perf_counter() - start), traffic


def _fit(workers: int | None, model, data) -> tuple[float, Traffic | None]:
    """(samples per second of `fit`, the traffic of its steps)."""
    with _cluster(workers, model.flat_params.nbytes) as (cluster, traffic):
        options = dict(batch_size=FIT_BATCH, seed=0, threads=2 if workers == "threads" else 1, cluster=cluster)
        model.fit(data, epochs=1, **options)  # the library built and loaded, the workers linked
        if traffic:
            traffic.reset()
        start = time.perf_counter()
        model.fit(data, epochs=FIT_EPOCHS, **options)
        return len(data["x"]) * FIT_EPOCHS / (time.perf_counter() - start), traffic


@contextmanager
def _cluster(workers, flat_bytes: int):
    """(None, None) for no cluster (one process, on one core or on both: `workers` None or
    "threads"); else (a Ray of `workers`, the Traffic of its calls)."""
    if workers in (None, "threads"):
        yield None, None
        return
    with spadc.Ray(workers=workers) as cluster, Traffic(cluster, flat_bytes) as traffic:
        yield cluster, traffic


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


def _mesh_exchange(ray, size: int, rounds: int = 200) -> float:
    """ms of a data-parallel step's exchanges between two workers over their mesh (spadrt/peers.py:
    half of a sum of `size` float64s each way, then half of the params), the mean of `rounds`."""

    @ray.remote(num_cpus=1)
    class Peer:
        def listen(self, toward):
            from spadrt.peers import Mesh
            self.mesh = Mesh(toward)
            return self.mesh.address

        def link(self, rank, addresses, token):
            self.mesh.connect(rank, addresses, token, timeout=30.0)

        def exchange(self, n):
            peer = 1 - self.mesh.rank
            sums, params = ([], {(0, 1): np.ones(n // 2)}), np.ones(n // 2)

            def step():
                self.mesh.exchange({peer: sums})
                self.mesh.exchange({peer: params})
            for _ in range(20):
                step()
            start = time.perf_counter()
            for _ in range(rounds):
                step()
            return (time.perf_counter() - start) / rounds

    peers = [Peer.remote() for _ in range(2)]
    addresses = ray.get([peer.listen.remote(ray.util.get_node_ip_address()) for peer in peers])
    ray.get([peer.link.remote(k, addresses, b"token") for k, peer in enumerate(peers)])
    seconds = max(ray.get([peer.exchange.remote(size) for peer in peers]))
    for peer in peers:
        ray.kill(peer)
    return seconds * 1e3


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
    exchange = _mesh_exchange(ray, mlp_size)
    ray.shutdown()
    print(f"Machine: {machine('one CPU per worker, the driver on the same cores')}; Ray {ray.__version__}.\n")
    print(f"Ray's own cost: a round trip to an actor doing nothing {round_trip:.2f} ms; one returning the digits "
          f"MLP's {mlp_size:,} float64s ({8 * mlp_size:,} bytes) {returned:.2f} ms. Two workers' exchanges of a "
          f"data-parallel step over their mesh (spadrt/peers.py: half of as much each way, then half of the params): "
          f"{exchange:.2f} ms.\n")
    print("| job | params | one process, one core | one process, two cores | 1 worker | 2 workers | 2 workers / 1 | "
          "bytes per step (2 workers): driver to workers, back, between workers |")
    print("|---|---|---|---|---|---|---|---|")
    columns = (None, "threads", 1, 2)
    for name, _, _, _, unit in jobs:
        rates = {w: best[(name, w)][0] for w in columns}
        _, traffic, size = best[(name, 2)]
        digits_shown = 1 if unit == "steps/s" else 0
        cells = " | ".join(f"{rates[w]:,.{digits_shown}f} {unit}" for w in columns)
        sent, received, between = traffic.per_step()
        print(f"| {name} | {size:,} | {cells} | {rates[2] / rates[1]:.2f}x | {sent:,.0f}, {received:,.0f}, "
              f"{between:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
