"""Past one machine, on Ray (INTERFACE.md): `spadc.Ray`, given as `cluster=` to `Model.grad`,
`Model.fit` and `spadc.sweep`.

Invariants:
- Ray is imported when a `Ray` is first used, never by `import spadc`: it is an optional extra.
- Workers run the model's ahead-of-time library for this host (the JIT's kernels, bit for bit:
  spadc/aot.py), shipped once per model and need as bytes through the object store; they need
  `spadrt` and NumPy, not the compiler (spadrt/remote.py). A worker whose loaded layout has another
  digest than the driver's library is refused.
- A batch's chunks (exact, RAD) and a population's blocks (ES) are split into contiguous runs, one
  per worker; each sends back its chunks' losses and the sums of the reduction tree's nodes within
  them (spadrt/reduction.py), which the driver finishes: the result is the local path's, bit for bit,
  for any number of workers. ES workers draw their blocks' perturbations from the Philox key (no
  noise table, no parameter vector per particle is ever sent).
- `fit` with the exact gradient or RAD and spadc's optimisers runs data-parallel with the
  optimiser on the workers, which exchange their chunks' sums among themselves
  (spadc/cluster_training.py); other fits send each step through `estimate`.
- A worker lost mid-call (its process killed, its node gone) is replaced by a new one, which
  computes the lost share again: the same bits. A share lost RETRIES times fails the call.
- A `Ray` may be used from several threads at once: each call's shares are its own, and calls to
  one worker queue up in it.
- SPAD (its ranking is state of the driver's estimator) and PES (each particle's state lives with
  the driver) run locally only: asked of a cluster, they are a `SpadcError` saying so.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import weakref

import numpy as np

from spadrt import calls, es, reduction
from spadrt.estimators import RAD, SPAD, Exact, variant_key
from spadrt.library import layout_digest
from spadrt.remote import Worker

from .errors import SpadcError

RETRIES = 3  # replacements of a lost worker, for one share of one call, before the call fails
FREE_WAIT = 5.0  # seconds to wait for the CPUs workers need (freed by actors killed just before) before refusing


def _ray():
    try:
        import ray
    except ImportError:
        raise SpadcError('spadc.Ray needs Ray, an optional extra: pip install "spadc[ray]"') from None
    return ray


class Ray:
    """A Ray cluster to spread work over: `address` None starts (or joins) a Ray instance on this
    machine, "auto" or "ray://host:port" joins a running cluster; `workers`: actors, one CPU each
    (default: one per CPU of the cluster). Workers start on first use, hold the library of every
    model and estimator they were given, and live until `close()`."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        if address is not None and not isinstance(address, str):
            raise SpadcError(f'address must be None, "auto" or "ray://host:port", got {address!r}')
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SpadcError(f"workers must be a positive integer (or None: one per CPU), got {workers!r}")
        self.address, self.workers = address, workers
        self.ray = None
        self._actor_class = None  # spadrt.remote.Worker as a Ray actor class, made on first use
        self.actors: list = []
        self.replaced = 0  # workers replaced after a loss, over this cluster's life
        self._libraries: dict[str, tuple] = {}  # key -> (object reference of the bytes, layout digest)
        self._keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {need: (key, layout)}
        self._serial = itertools.count()  # libraries' keys, never reused
        self._lock = threading.Lock()
        self.linked = False  # the workers' mesh is up (spadc/cluster_training.py)
        self.address_toward = None  # the driver's host, as the workers reach it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop every worker (the Ray instance itself is left running)."""
        with self._lock:
            for actor in self.actors:
                self.ray.kill(actor)
            self.actors, self._libraries, self.linked = [], {}, False
            self._keys = weakref.WeakKeyDictionary()

    def _start(self):
        if self.ray is None:
            ray = _ray()
            if not ray.is_initialized():
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            self.ray = ray
        if not self.actors:
            cpus = int(self.ray.cluster_resources().get("CPU", 1))
            count = self.workers or cpus
            waited = time.monotonic() + FREE_WAIT
            while (free := int(self.ray.available_resources().get("CPU", 0))) < count and time.monotonic() < waited:
                time.sleep(0.05)  # workers just killed (another Ray's close()) give their CPUs back soon after
            if count > free:
                raise SpadcError(f"{count} workers need {count} free CPUs (one each), but the cluster has {free} free "
                                 f"of {cpus}: another spadc.Ray's workers, or other work, hold the others (close() "
                                 f"that Ray, or ask fewer workers)")
            self._actor_class = self.ray.remote(num_cpus=1)(Worker)
            self.actors = [self._actor_class.remote() for _ in range(count)]

    def _library(self, model, estimator, entries: tuple) -> tuple[str, dict]:
        """(the workers' key, the layout) of `model`'s library with `estimator`'s variant and
        `entries`, built and loaded by every worker on first use."""
        if model._library is None:
            raise SpadcError("this model cannot be shipped to a cluster: it has no library to send its workers")
        need = (variant_key(getattr(estimator, "sampling", None)), entries)
        with self._lock:
            self._start()
            known = self._keys.setdefault(model, {})
            if need not in known:
                library, layout = model._library(estimator, entries)
                key = f"m{next(self._serial)}"
                digest = getattr(model, "library_digest", None)
                digest = layout_digest(json.dumps(layout).encode("utf-8")) if digest is None else digest
                reference = self.ray.put(library)
                for k, actor in enumerate(self.actors):
                    self._check(self.ray.get(actor.add.remote(key, reference)), digest, k)
                self._libraries[key] = (reference, digest)  # refused, it is not given to replacements
                known[need] = (key, layout)
            return known[need]

    def _any_library(self, model) -> str:
        """The workers' key of a library of `model` they hold already (each has the forward kernel),
        else of its exact one, built and loaded now."""
        with self._lock:
            held = self._keys.get(model)
            if held:
                return next(iter(held.values()))[0]
        return self._library(model, Exact(), ())[0]

    def _check(self, got: int, digest: int, k: int):
        if got != digest:
            raise SpadcError(f"cluster worker {k} loaded a library whose layout digest is {got:#018x}, not the "
                             f"driver's {digest:#018x}: its spadrt or its copy of the library differ; refused")

    def _replace(self, k: int):
        """A new worker k, holding every library the lost one held."""
        actor = self._actor_class.remote()
        for key, (reference, digest) in self._libraries.items():
            self._check(self.ray.get(actor.add.remote(key, reference)), digest, k)
        self.actors[k] = actor
        self.replaced += 1
        self.linked = False

    def _run(self, shares: list[tuple]) -> list:
        """[worker k's `method(*arguments)` for each share k = (method, *arguments)], in share order;
        a share whose worker was lost is given to a replacement."""
        lost = self.ray.exceptions.RayActorError
        futures = [getattr(self.actors[k], method).remote(*arguments) for k, (method, *arguments) in enumerate(shares)]
        results = []
        for k, (method, *arguments) in enumerate(shares):
            for attempt in range(RETRIES + 1):
                try:
                    results.append(self._result(futures[k]))
                    break
                except lost as error:
                    if attempt == RETRIES:
                        raise SpadcError(f"a cluster worker was lost {RETRIES + 1} times computing one share of "
                                         f"this call; giving up ({error})") from None
                    with self._lock:
                        self._replace(k)
                    futures[k] = getattr(self.actors[k], method).remote(*arguments)
        return results

    def train_runs(self, data: dict, runs: list[tuple]) -> list[dict]:
        """A sweep's runs, each (model, (estimator, optimizer, fit's keywords), seed), spread over the
        workers, each kept busy with one run at a time: each run's row (spadrt.remote.train_run),
        in the order of `runs`. A run whose worker is lost is run again on its replacement."""
        keys = []
        for model, (estimator, _, _), _ in runs:
            particles = ("particles",) if isinstance(estimator, (es.ES, es.PES)) else ()
            keys.append(self._library(model, estimator, particles)[0])
        held = self.ray.put(data)
        pending = list(range(len(runs)))[::-1]
        running: dict = {}  # future -> (run index, worker)
        results: list = [None] * len(runs)
        attempts = [0] * len(runs)

        def submit(k: int, worker: int):
            _, (estimator, optimizer, options), seed = runs[k]
            running[self.actors[worker].train.remote(keys[k], held, estimator, optimizer, options, seed)] = (k, worker)

        for worker in range(min(len(self.actors), len(runs))):
            submit(pending.pop(), worker)
        while running:
            (done,), _ = self.ray.wait(list(running), num_returns=1)
            k, worker = running.pop(done)
            try:
                results[k] = self._result(done)
            except self.ray.exceptions.RayActorError as error:
                attempts[k] += 1
                if attempts[k] > RETRIES:
                    raise SpadcError(f"a cluster worker was lost {attempts[k]} times during one run of the sweep; "
                                     f"giving up ({error})") from None
                with self._lock:
                    self._replace(worker)
                pending.append(k)
            if pending:
                submit(pending.pop(), worker)
        return results

    def _result(self, future):
        """A call's result; a user's error raised by the worker as one process raises it."""
        try:
            return self.ray.get(future)
        except self.ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, SpadcError):
                raise error.cause from None
            raise

    def holding(self, data: dict) -> "_Held":
        """`data` (arrays by input name, the first axis the sample) sent to the workers once, on first
        use: `holding(data).batch(indices)` is this cluster for a call whose batch is those rows of
        `data`, which sends the workers the indices instead of the rows (`fit`, every step)."""
        return _Held(self, data)

    def estimate(self, model, estimator, step: int, call: dict, out=None,
                 held: tuple | None = None) -> tuple[float, np.ndarray, int, dict]:
        """(mean loss, flat gradient, tape bytes stored over the batch, the kernel's layout entry) of
        one gradient estimate over checked arguments (`Model._estimate`'s `call`), by the workers.
        `held`: (the workers' copy of a data set by input name, the batch's rows of it)."""
        if isinstance(estimator, es.ES):
            return self._population(model, estimator, step, call, held)
        if isinstance(estimator, (SPAD, es.PES)) or not isinstance(estimator, (Exact, RAD)):
            raise SpadcError(f"{type(estimator).__name__} runs in one process only (its state lives with the "
                             "driver): a cluster computes exact, RAD and ES gradients")
        key, layout = self._library(model, estimator, ())
        entry = layout["variants"][variant_key(estimator.sampling)]
        prepared, n = call["prepared"], call["prepared"].n
        per_call = entry.get("chunk", calls.CHUNK)
        flat = self.ray.put(call["flat"])
        shares = []
        for first, last in reduction.split(-(-n // per_call), len(self.actors)):
            rows = (first * per_call, min(last * per_call, n))
            options = (call["training"], call["seed"], step, call["offset"] + rows[0])
            shares.append(("gradient", key, flat, _rows(model, prepared, *rows, held), estimator, options, first, n,
                           *_held_rows(held, *rows)))
        results = self._run(shares)
        chunks = [chunk for share_chunks, _ in results for chunk in share_chunks]
        known = {node: value for _, nodes in results for node, value in nodes.items()}
        # A split kernel's sums end with its hoisted values' adjoints, finished here as in one
        # process (spadrt/split_kernels.py): by the driver's own copy of the kernel.
        finish = model._finisher(model._variant(estimator.sampling)[0], call["flat"], n) if "hoisted" in entry else None
        return (*model._combined(chunks, known, n, out, finish), entry)

    def _population(self, model, estimator, step: int, call: dict, held):
        key, layout = self._library(model, None, ("particles",))
        flat = self.ray.put(call["flat"])
        n = call["prepared"].n
        values = _rows(model, call["prepared"], 0, n, held)
        options = (call["training"], call["seed"], step, call["offset"])
        shares = [("population", key, flat, values, estimator, options, first, last, k == 0, *_held_rows(held, 0, n))
                  for k, (first, last) in enumerate(reduction.split(es.blocks(estimator), len(self.actors)))]
        results = self._run(shares)
        known = {node: value for _, nodes in results for node, value in nodes.items()}
        entry = {**layout["kernels"]["particles"], "tape_bytes": 0}
        return results[0][0], es.finish(model, estimator, known), 0, entry


def _rows(model, prepared, first: int, last: int, held=None) -> dict:
    """Each of the kernel's inputs (states included) by name, but those the workers hold (`held`):
    rows first..last-1 of a batched one."""
    return {spec["name"]: (array[first:last] if batched else array)
            for spec, (array, batched) in zip(model.layout["inputs"], prepared.keepalive)
            if held is None or spec["name"] not in held[0]}


def _held_rows(held, first: int, last: int) -> tuple:
    """A worker call's last arguments for rows first..last-1 of the batch: (their indices in the
    held data set, the names of its inputs, the object references of its arrays), or none."""
    if held is None:
        return ()
    references, indices = held
    return (indices[first:last], tuple(references), *references.values())


class _Held:
    """A data set the workers hold (`Ray.holding`)."""

    def __init__(self, cluster: Ray, data: dict):
        self.cluster, self.data, self.references = cluster, data, None

    def batch(self, indices: np.ndarray) -> "_Batch":
        return _Batch(self, indices)

    def sent(self) -> dict:
        """The workers' copy of the data set (object references by input name), sent on first use."""
        if self.references is None:
            with self.cluster._lock:
                self.cluster._start()
            self.references = {name: self.cluster.ray.put(np.ascontiguousarray(array))
                               for name, array in self.data.items()}
        return self.references

    def trainer(self, model, estimator, optimizer, precondition):
        """`fit`'s run on this data set with the optimiser on the workers (spadc/cluster_training.py),
        or None where it stays with the driver."""
        from .cluster_training import trainer  # (that module builds on this one)
        return trainer(self, model, estimator, optimizer, precondition)

    def accuracy(self, model) -> float:
        """`spadrt.training.accuracy` of the whole data set at the model's params, its rows shared
        out among the workers (a count of samples: the same whatever the share)."""
        cluster, references = self.cluster, self.sent()
        key = cluster._any_library(model)
        n = len(next(iter(self.data.values())))
        flat, rows = cluster.ray.put(model.flat_params), np.arange(n)
        shares = [("correct", key, flat, rows[first:last], tuple(references), *references.values())
                  for first, last in reduction.split(n, len(cluster.actors))]
        return sum(cluster._run(shares)) / n


class _Batch:
    """A cluster for one call whose batch is rows `indices` of a held data set."""

    def __init__(self, held: _Held, indices: np.ndarray):
        self.held, self.indices = held, indices

    def estimate(self, model, estimator, step: int, call: dict, out=None):
        return self.held.cluster.estimate(model, estimator, step, call, out, (self.held.sent(), self.indices))

