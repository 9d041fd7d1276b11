"""Data-parallel `fit` on a cluster, the optimiser on the workers (spadc/cluster.py, INTERFACE.md
"Past one machine, on Ray").

Invariants:
- Every worker holds the run's params and the optimiser of its own run of them, and takes every
  step: it computes its contiguous run of the batch's chunks (the shares of `Ray.estimate`),
  sends each peer its sums cut to that peer's run of the params straight over their link
  (spadrt/peers.py: a TCP mesh, not the driver, not the object store), finishes its run of the
  batch's gradient in chunk order, steps it and sends it to its peers (spadrt/remote.py). So all
  workers hold the same params, those of one process's `fit`, and neither gradients nor params
  pass through the driver.
- The driver sends each worker one call for one or more epochs (its share of every step: row
  indices; as many epochs as take about CALL_SECONDS, one where the caller looks between epochs)
  and waits once, for the steps' losses, the right answers after each epoch (classifiers) and,
  at times, the workers' shares of the state, which it puts into the model and its optimiser:
  between calls they are the run's, as in one process (checkpoints, Ctrl-C). A run that ends
  inside a call (stopped, interrupted) takes the state after the last epoch given from the
  workers, which make it again from the state before the call.
- A worker lost anywhere in a call (its peers find out from their links) is replaced, every
  worker restarts from the last state the driver took and the calls since run again: the same
  bits. Workers lost RETRIES + 1 times fail the fit.
- For exact and RAD gradients and spadc's own optimisers without a preconditioner; other fits on
  a cluster send the driver's params every step (`Ray.estimate`).
"""

from __future__ import annotations

import copy
import itertools
import secrets
import time

import numpy as np

from spadrt import calls, reduction
from spadrt.estimators import RAD, Exact, variant_key
from spadrt import optim
from spadrt.peers import PeerLost

from .cluster import RETRIES
from .errors import SpadcError

STATE_INTERVAL = 1.0  # seconds between the workers' reports of the state (their cost; a loss reruns as much)
CALL_SECONDS = 0.2  # of epochs in one call to the workers (a call costs the driver and Ray a few ms)
MAX_EPOCHS_PER_CALL = 64  # (what an interrupted call may take again)
TOKEN_BYTES = 32  # the secret of a mesh of workers
LINK_TIMEOUT = 30.0  # seconds for the workers, all listening, to link to each other
_RUNS = itertools.count()  # the workers' keys of runs, never reused in this process


def trainer(held, model, estimator, optimizer, precondition) -> "DataParallel | None":
    """The data-parallel training of `model` on the data set `held` (`Ray.holding`), or None where
    the optimiser must stay with the driver."""
    if (precondition is not None or type(estimator) not in (Exact, RAD)
            or type(optimizer) not in set(optim.OPTIMIZERS.values())):
        return None
    return DataParallel(held, model, estimator, optimizer)


class DataParallel:
    """One `fit`'s run on the workers of `held.cluster`."""

    def __init__(self, held, model, estimator, optimizer):
        self.held, self.model, self.estimator, self.optimizer = held, model, estimator, optimizer
        self.cluster = held.cluster
        self.key, layout = self.cluster._library(model, estimator, ())
        self.per_call = layout["variants"][variant_key(estimator.sampling)].get("chunk", calls.CHUNK)
        self.tag = f"r{next(_RUNS)}"  # the workers' key of this run
        self.started = False
        self.taken = None  # the epoch after which the model and optimiser hold the run's state (None: its start)
        self.traffic = {"steps": 0, "to workers": 0, "from workers": 0, "between workers": 0}  # bytes, over the fit

    def close(self):
        """Let the workers forget the run (after the calls already queued)."""
        for actor in self.cluster.actors:
            actor.end.remote(self.tag)

    def run(self, epochs, last: int, seed: int, count: bool, looks: bool, changes: bool):
        """For each epoch of `epochs` (number, learning rate, steps: each (number, first row's
        position in the epoch, row indices), None; `last`: the last one's number), once the
        workers took it: the epoch with its last item ([(mean loss, tape bytes per sample)] of the
        steps taken, up to the first loss that is not finite; the count of right answers on the
        data set after it, if `count`). The model and optimiser hold the state after it if the
        caller `looks` at them between epochs, else once the run ends (stopped early,
        interrupted, or done: the state after the last epoch given). Each call to the workers
        takes one epoch if the caller `looks` or `changes` the optimiser between epochs, else as
        many as last about CALL_SECONDS (the epochs are drawn when sent: so is their learning rate)."""
        plans = iter(epochs)
        since: list = []  # calls sent after the state taken, [plans, report, futures] (sent again after a loss)
        reported, seen, lost, per_call = time.monotonic(), None, 0, 1
        try:
            while group := list(itertools.islice(plans, 1 if looks or changes else per_call)):
                report = looks or group[-1][0] == last or time.monotonic() - reported >= STATE_INTERVAL
                reported = time.monotonic() if report else reported
                since.append([group, report, None])
                sent = time.monotonic()
                while True:
                    try:
                        for entry in since:
                            if entry[2] is None:
                                entry[2] = self._send(entry[0], seed, count, entry[1])
                        results = self._results(since[-1][2])
                        break
                    except _Lost as error:
                        lost += 1
                        if lost > RETRIES:
                            raise SpadcError(f"cluster workers were lost {lost} times during this fit; giving up "
                                             f"({error.error})") from None
                        self._replace_lost()
                        for entry in since:
                            entry[2] = None  # sent again, from the state taken
                per_call = min(max(int(CALL_SECONDS * len(group) / max(time.monotonic() - sent, 1e-9)), 1),
                               MAX_EPOCHS_PER_CALL)
                taken = [result["epochs"] for result in results]
                if report and taken[0]:  # (the state after the last epoch taken)
                    self._take_state(group[len(taken[0]) - 1][0], [result["share"] for result in results])
                    since = []
                self.traffic["between workers"] += sum(result["sent"] for result in results)
                for k, plan in enumerate(group[:len(taken[0])]):
                    seen = plan[0]
                    self.traffic["steps"] += len(taken[0][k]["steps"])
                    correct = (sum(epochs[k]["correct"] for epochs in taken if epochs[k]["correct"] is not None)
                               if count else None)
                    yield (*plan[:3], (taken[0][k]["steps"], correct))
        finally:
            if seen is not None and seen != self.taken:  # (ended early: the state after the last epoch given)
                try:
                    self._take_state(seen, self._results([actor.share.remote(self.tag, seen)
                                                          for actor in self.cluster.actors]))
                except (_Lost, self.cluster.ray.exceptions.RayError):
                    pass  # (a worker lost: the model keeps the state after epoch `self.taken`)

    def _send(self, plans: list[tuple], seed: int, count: bool, report: bool) -> list:
        """Each worker's call for epochs `plans` (its chunks of every step)."""
        actors = self.cluster.actors
        shares = [[] for _ in actors]
        samples = np.arange(len(next(iter(self.held.data.values()))))
        counted = reduction.split(len(samples), len(actors))
        for number, lr, batches, _ in plans:
            steps = [[] for _ in actors]
            for step, first, rows in batches:
                n = len(rows)
                spread = reduction.split(-(-n // self.per_call), len(actors))
                for k in range(len(actors)):
                    lo, hi = spread[k] if k < len(spread) else (0, 0)
                    start, stop = lo * self.per_call, min(hi * self.per_call, n)
                    steps[k].append((step, first + start, n, lo, rows[start:stop]))
            for k in range(len(actors)):
                shares[k].append((number, float(lr), steps[k]))
        rows_counted = [samples[slice(*counted[k])] if count and k < len(counted) else None for k in range(len(actors))]
        self.traffic["to workers"] += nbytes(shares) + nbytes(rows_counted)
        references = self.held.sent()
        # Calls that wait on each other (each worker's epochs on its peers') reach every worker in
        # the same order, whatever other threads send: none waits on a peer busy with another's.
        with self.cluster._lock:
            if not self.cluster.linked:
                self._link()
            if not self.started:
                self._begin(references)
            settings = optim.settings(self.optimizer)
            return [actor.epochs.remote(self.tag, settings, seed, shares[k], rows_counted[k], report)
                    for k, actor in enumerate(actors)]

    def _take_state(self, epoch: int, shares: list[tuple]):
        """The run's state after `epoch`, each worker's share of it (params, the optimiser's
        arrays of their size, its other fields), into the model and the optimiser."""
        flat = np.concatenate([share[0] for share in shares])
        np.copyto(self.model.flat_params, flat)
        arrays = {name: np.concatenate([share[1][name] for share in shares]) for name in shares[0][1]}
        self.optimizer.__dict__.update({**copy.deepcopy(shares[0][2]), **arrays})  # (its state: not its settings)
        self.taken = epoch
        self.traffic["from workers"] += flat.nbytes + sum(nbytes(share[1:]) for share in shares)

    def _results(self, futures: list) -> list:
        """Every worker's result; `_Lost` if a worker was lost (its peers then say so too); a
        user's error raised by one worker as one process raises it."""
        ray = self.cluster.ray
        ray.wait(futures, num_returns=len(futures))
        results, lost = [], None
        for future in futures:
            try:
                results.append(ray.get(future))
            except ray.exceptions.RayActorError as error:
                lost = lost or error
            except ray.exceptions.RayTaskError as error:
                if not isinstance(error.cause, PeerLost):
                    self.started = self.cluster.linked = False  # (the failed worker closed its links)
                    raise error.cause if isinstance(error.cause, SpadcError) else error from None
                lost = lost or error.cause
        if lost is not None:
            self.cluster.linked = False
            raise _Lost(lost)
        return results

    def _begin(self, references: dict):
        """Every worker starts the run from the state taken (its errors come with the epoch's)."""
        ray = self.cluster.ray
        flat, optimizer = ray.put(self.model.flat_params), ray.put(self.optimizer)
        for actor in self.cluster.actors:
            actor.begin.remote(self.tag, self.key, flat, optimizer, self.estimator, tuple(references),
                               *references.values())
        self.started = True

    def _link(self):
        """The workers' mesh, made again (spadrt/peers.py)."""
        cluster = self.cluster
        if cluster.address_toward is None:
            cluster.address_toward = cluster.ray.util.get_node_ip_address()
        addresses = self._results([actor.listen.remote(cluster.address_toward) for actor in cluster.actors])
        token = secrets.token_bytes(TOKEN_BYTES)  # (what a worker shows its peers: their shares are unpickled)
        try:
            self._results([actor.link.remote(k, addresses, token, LINK_TIMEOUT)
                           for k, actor in enumerate(cluster.actors)])
        except _Lost as lost:
            if self._lost_workers():
                raise
            raise SpadcError(f"the cluster's workers could not link to each other ({lost.error}): each listens on a "
                             f"TCP port of its host ({', '.join(f'{host}:{port}' for host, port in addresses)}), "
                             f"which the others must reach") from None
        cluster.linked = True

    def _replace_lost(self):
        """Replace every worker lost; all of them start the run again."""
        for k in self._lost_workers():
            with self.cluster._lock:
                self.cluster._replace(k)
        self.started = False

    def _lost_workers(self) -> list[int]:
        """The workers whose process is gone (after the calls queued to the others are done)."""
        ray, lost = self.cluster.ray, []
        for k, actor in enumerate(self.cluster.actors):
            try:
                ray.get(actor.process.remote())
            except ray.exceptions.RayActorError:
                lost.append(k)
        return lost


class _Lost(Exception):
    """A worker was lost during a call (`error`: what said so)."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def nbytes(value) -> int:
    """Bytes of the arrays and numbers in `value` (nested in tuples, lists and dicts; object
    references and other objects count nothing): a call's traffic, counted from what it sends."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 8 if isinstance(value, (int, float)) else 0
