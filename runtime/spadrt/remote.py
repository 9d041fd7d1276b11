"""A cluster worker's side of distributed calls (spadc/cluster.py runs this class as a Ray actor):
the model's ahead-of-time library, NumPy, nothing of the compiler and nothing of Ray.

Invariants:
- A worker computes exactly what the local path computes for the same chunks or blocks: the same
  kernels (the library is the JIT's code for this CPU, spadc/aot.py), keyed by each sample's index
  in the whole batch, each chunk's gradient weighted by its share of the whole batch. What it sends
  back is the sums of the reduction tree's nodes within its chunks (spadrt/reduction.py), so the
  driver's finished tree has the bits of one process's.
- Each call runs on one core (`threads=1`): a worker is given one CPU by the cluster.
- Each library is written to a file of its own (a loaded library's file is never overwritten), in
  a private temporary directory removed when the worker ends.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile

import numpy as np

from . import calls, es, optim, reduction
from .arguments import prepare
from .library import load
from .peers import Mesh
from .training import correct


class Worker:
    """The libraries a driver gave this worker, by the driver's key for each."""

    def __init__(self):
        self._directory = tempfile.mkdtemp(prefix="spadc-worker-")
        self.models = {}
        self.runs = {}  # data-parallel trainings, by the driver's key for each
        self.mesh = None  # the links to the other workers (spadrt/peers.py), made when first asked

    def __del__(self):
        shutil.rmtree(getattr(self, "_directory", ""), ignore_errors=True)

    def add(self, key: str, library: bytes) -> int:
        """Load a library under `key`: the digest of its layout (which the driver checks)."""
        # A fresh file each time: a library already loaded from a path must never be overwritten.
        descriptor, path = tempfile.mkstemp(suffix=".so", prefix=f"{key}-", dir=self._directory)
        with os.fdopen(descriptor, "wb") as f:
            f.write(library)
        self.models[key] = load(path)
        return self.models[key].library_digest

    def process(self) -> int:
        return os.getpid()

    def gradient(self, key: str, flat: np.ndarray, values: dict, estimator, options: tuple, first_chunk: int,
                 total: int, indices=None, names=(), *columns) -> tuple[list[tuple[int, float, int]], dict]:
        """Chunks first_chunk.. of a batch of `total` samples (`values`: their rows, each input by
        name, states included; or, for the inputs `names`, rows `indices` of `columns`, a data set
        the worker holds already; `options`: (training, seed, step, offset of the first row)):
        each chunk's (samples, mean loss, tape bytes), and the sums of the tree's nodes within them."""
        values = {**values, **_rows(dict(zip(names, columns)), indices)}
        model = self.models[key]
        return _chunk_nodes(model, flat, prepare(model.layout, values, model._dtype), estimator, options,
                            first_chunk, total)

    def correct(self, key: str, flat: np.ndarray, indices, names, *columns) -> int:
        """How many of rows `indices` of a held data set (its inputs `names`, `columns`) the model
        classifies right at params `flat` (spadrt.training.correct)."""
        values = _rows(dict(zip(names, columns)), indices)
        return correct(self.models[key], values, threads=1, params=flat)

    def population(self, key: str, flat: np.ndarray, values: dict, estimator, options: tuple, first_block: int,
                   last_block: int, center: bool, indices=None, names=(), *columns) -> tuple[float | None, dict]:
        """ES blocks first_block..last_block-1 on every row of `values` (or, as for `gradient`, of
        held `columns`): (the mean loss at the params themselves if `center`, else None; the sums
        of the tree's nodes within those blocks)."""
        model = self.models[key]
        training, seed, step, offset = options
        values = {**values, **_rows(dict(zip(names, columns)), indices)}
        call = dict(prepared=prepare(model.layout, values, model._dtype), flat=flat, training=training, seed=seed,
                    offset=offset, threads=1)
        loss = es.center_loss(model, step=step, **call)[0] if center else None
        return loss, es.block_nodes(model, estimator, step, first_block, last_block, **call)

    def listen(self, toward: str) -> tuple[str, int]:
        """A new end of the workers' mesh (spadc/cluster_training.py; the last one closed): the
        address peers reach this worker at (`toward`: the driver's host, whose route names it)."""
        if self.mesh is not None:
            self.mesh.close()
        self.mesh = Mesh(toward)
        return self.mesh.address

    def link(self, rank: int, addresses: list, token: bytes, timeout: float):
        """Connect to every other worker within `timeout` seconds, this one being worker `rank`
        (`addresses`: by rank; `token`: the mesh's secret, spadrt/peers.py)."""
        self.mesh.connect(rank, addresses, token, timeout)

    def begin(self, run: str, key: str, flat: np.ndarray, optimizer, estimator, names, *columns):
        """Start data-parallel training `run` on library `key`, from params `flat` and
        `optimizer`'s state, on a held data set (inputs `names`, `columns`); again after a worker
        was lost, from the state they all go back to."""
        self.runs[run] = _Training(self.models[key], flat, optimizer, estimator, dict(zip(names, columns)),
                                   self.mesh.rank, self.mesh.workers)

    def epochs(self, run: str, settings: dict, seed: int, plans: list[tuple], counted, report: bool) -> dict:
        """`run`'s epochs `plans` in turn, each (number, learning rate, steps), with the
        optimiser's `settings` (spadrt.optim.settings: as the driver's are now). An epoch's steps
        are each (number, offset of its first row in the epoch, samples, this worker's first
        chunk, the rows of its chunks): this worker's chunks of each batch, the gradient finished
        from every worker's (in chunk order), the optimiser's step and the bounds, as `fit`
        steps; then the right answers among rows `counted` (None: not counted). A loss not
        finite stops the run, its params those before the step (every worker has the same loss):
        no epoch after it is taken. {"epochs": [{"steps": [(mean loss, tape bytes per sample)],
        "correct"}] of the epochs taken, "sent": bytes sent to peers, "share": if `report`, this
        worker's share of the state after the last epoch taken (`_Training.share`)}."""
        training, mesh = self.runs[run], self.mesh
        sent, taken = mesh.sent, []
        if not training.stopped:
            training.begin_call(settings, seed, plans)
        try:
            for number, lr, steps in plans:
                if training.stopped:
                    break
                losses = training.take_epoch(mesh, number, lr, steps)
                taken.append({"steps": losses, "correct": None if counted is None else
                              correct(training.model, training.rows(counted), threads=1, params=training.flat)})
        except BaseException:
            mesh.close()  # (its peers learn at once that it is gone)
            raise
        return {"epochs": taken, "sent": mesh.sent - sent,
                "share": training.share(training.done, mesh) if report else None}

    def share(self, run: str, number: int) -> tuple:
        """This worker's share of `run`'s state after its epoch `number` (`_Training.share`)."""
        return self.runs[run].share(number, self.mesh)

    def end(self, run: str):
        """Forget `run`."""
        self.runs.pop(run, None)

    def train(self, key: str, data: dict, estimator, optimizer, fit_options: dict, seed: int) -> dict:
        """One run of a sweep (spadc/sweeps.py) on the library `key`."""
        return train_run(self.models[key], data, estimator, optimizer, fit_options, seed, threads=1)


class _Training:
    """A data-parallel training's state on one worker, the same bits on every worker as in one
    process: all the params, and the optimiser of its own run of them (worker k of n: run k of
    `reduction.split(params, n)`; spadc's optimisers work entry by entry, so runs stepped apart
    are the bits of the whole stepped at once). Of each step's gradient it finishes its run, from
    every worker's sums of its chunks (in chunk order), steps it and sends it to every peer. Of
    the driver's last call it holds the state before it (`kept`) and its plans, from which the
    state after any of its epochs can be made again (`share`)."""

    def __init__(self, model, flat: np.ndarray, optimizer, estimator, columns: dict, rank: int, workers: int):
        self.model, self.estimator, self.columns = model, estimator, columns
        self.flat = np.array(flat)  # (what Ray gives is a read-only view of the object store)
        self.runs = reduction.split(self.flat.size, workers) + [(0, 0)] * workers  # (more workers than params)
        self.run = slice(*self.runs[rank])
        self.optimizer = copy.deepcopy(optimizer)
        for name, value in optim.state(self.optimizer).items():  # (the driver's arrays are of all the params)
            if isinstance(value, np.ndarray) and value.shape == self.flat.shape:
                setattr(self.optimizer, name, value[self.run].copy())
        self.gradient = np.empty_like(self.flat[self.run])
        self.stopped = False
        self.done = None  # the last epoch taken: the params and optimiser hold the state after it
        self.kept = None  # (epoch, params, optimiser's state): the state before the last call's epochs
        self.call = (0, [])  # the last call's seed and plans

    def begin_call(self, settings: dict, seed: int, plans: list[tuple]):
        """Before a call's epochs: the state now kept (as the state after the epoch before them,
        into the buffers of the last one kept), the optimiser given `settings`."""
        _, flat, fields = self.kept or (None, None, {})
        self.kept = (plans[0][0] - 1, _into(flat, self.flat),
                     {name: _into(fields.get(name), value) if isinstance(value, np.ndarray) else copy.deepcopy(value)
                      for name, value in optim.state(self.optimizer).items()})
        for name, value in settings.items():
            setattr(self.optimizer, name, value)
        self.call = (seed, plans)

    def take_epoch(self, mesh, number: int, lr: float, steps: list[tuple]) -> list[tuple[float, float]]:
        """Epoch `number`'s steps (`Worker.epochs`), with this worker's `mesh`: (mean loss, tape
        bytes per sample) of each step taken."""
        seed, taken = self.call[0], []
        for step, offset, total, first_chunk, rows in steps:
            if self.stopped:
                break
            mine = (_chunk_nodes(self.model, self.flat, self.model._inputs(self.rows(rows)), self.estimator,
                                 (True, seed, step, offset), first_chunk, total) if len(rows) else ([], {}))
            taken.append(self.step(mine, mesh, total, lr))
        self.done = number if taken else self.done
        return taken

    def rows(self, indices: np.ndarray) -> dict:
        return _rows(self.columns, indices)

    def share(self, epoch: int, mesh) -> tuple[np.ndarray, dict, dict]:
        """This worker's share of the state after `epoch`, for the driver to put together: (its
        run of the params, the optimiser's arrays of the params' size, run the same, its other
        fields) (the runs of `reduction.split` among the mesh's workers, in rank order). The state
        after an epoch of the last call before its last is made again from the state kept, every
        worker taking those epochs again together (the driver asks them all)."""
        if self.kept is not None and self.kept[0] == epoch:
            _, flat, fields = self.kept
        elif self.kept is not None and self.done is not None and self.kept[0] < epoch <= self.done:
            if epoch < self.done:
                self._take_again(epoch, mesh)
            flat, fields = self.flat, optim.state(self.optimizer)
        else:
            raise RuntimeError(f"this worker holds no state after epoch {epoch} (it took {self.done})")
        run = flat[self.run]
        sized = {name for name, value in fields.items() if isinstance(value, np.ndarray) and value.shape == run.shape}
        return (run, {name: fields[name] for name in sized},
                {name: value for name, value in fields.items() if name not in sized})

    def _take_again(self, epoch: int, mesh):
        """Back to the state kept, then the last call's epochs up to `epoch` taken again."""
        _, flat, fields = self.kept
        np.copyto(self.flat, flat)
        self.optimizer.__dict__.update({name: value.copy() if isinstance(value, np.ndarray) else copy.deepcopy(value)
                                        for name, value in fields.items()})
        self.stopped = False
        for number, lr, steps in self.call[1]:
            if number > epoch:
                break
            self.take_epoch(mesh, number, lr, steps)

    def step(self, mine: tuple, mesh, total: int, lr: float) -> tuple[float, float]:
        """The step of a batch of `total` samples, this worker's chunks of it `mine`
        (`_chunk_nodes`): (mean loss, tape bytes per sample)."""
        entry, _ = self.model._variant(getattr(self.estimator, "sampling", None))
        finish = self.model._finisher(entry, self.flat, total)
        size = self.flat.size

        def for_run(k: int) -> tuple:
            """(this worker's chunks, its sums cut to worker k's run; of a split kernel, with the
            hoisted values' adjoints after it, which every worker finishes: spadrt/split_kernels.py)"""
            run = slice(*self.runs[k])
            return mine[0], {node: value[run] if finish is None else np.concatenate((value[run], value[size:]))
                             for node, value in mine[1].items()}
        received = mesh.exchange({k: for_run(k) for k in mesh.peers})
        parts = [received[k] if k != mesh.rank else for_run(k) for k in range(mesh.workers)]
        chunks = [chunk for share_chunks, _ in parts for chunk in share_chunks]
        known = {node: value for _, part_nodes in parts for node, value in part_nodes.items()}
        loss, gradient, stored = self.model._combined(chunks, known, total, self.gradient, finish, self.run)
        if not math.isfinite(loss):
            self.stopped = True  # (every worker has the same loss: none steps)
        else:
            self.optimizer.step(self.flat[self.run], gradient, lr)
            for k, stepped in mesh.exchange({k: self.flat[self.run] for k in mesh.peers}).items():
                self.flat[slice(*self.runs[k])] = stepped
            self.model.project_params(self.flat)
        return loss, stored / total


def _rows(columns: dict, indices) -> dict:
    """Rows `indices` of a held data set (its arrays by input name)."""
    return {name: column[indices] for name, column in columns.items()}


def _into(buffer: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    """A copy of `value`, in `buffer` if it fits."""
    if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
        return value.copy()
    np.copyto(buffer, value)
    return buffer


def _chunk_nodes(model, flat: np.ndarray, prepared, estimator, options: tuple, first_chunk: int,
                 total: int) -> tuple[list[tuple[int, float, int]], dict]:
    """`Worker.gradient`'s result for the rows `prepared`."""
    training, seed, step, offset = options
    entry, function = model._variant(getattr(estimator, "sampling", None))
    parts = model._chunk_parts(entry, function, prepared=prepared, flat=flat, training=training, seed=seed,
                               step=step, offset=offset, threads=1, site_data=None, scores=None, total=total)
    per_call = entry.get("chunk", calls.CHUNK)
    sums = reduction.node_sums(first_chunk, [part[2] for part in parts], -(-total // per_call))
    nodes = {node: value.copy() for node, value in sums.items()}  # sent after the pool has its buffers back
    if total > per_call:
        for part in parts:
            model._buffers.give(part[2])
    return [(count, loss, stored) for count, loss, _, stored, _ in parts], nodes


def train_run(model, data: dict, estimator, optimizer, fit_options: dict, seed: int, threads: int | None) -> dict:
    """One run of a sweep: the model from params drawn with `seed`, trained by `fit`; the last
    epoch's metrics (NaN where there are none), the training data's loss in evaluation mode after
    training, and `curve`, the train loss per epoch."""
    model.init_params(seed)
    history = model.fit(data, estimator=estimator, optimizer=optimizer, seed=seed, threads=threads, **fit_options)
    last = {name: (values[-1] if values else math.nan) for name, values in
            (("train_loss", history.train_loss), ("val_loss", history.val_loss),
             ("val_accuracy", history.val_accuracy), ("train_accuracy", history.train_accuracy))}
    # The training data's loss in evaluation mode (fit's train loss is each epoch's running mean in
    # training mode); NaN under validation_split, whose training part fit itself draws.
    trained = (math.nan if "validation_split" in fit_options or not history.train_loss else
               float(np.mean(model.loss(inputs=data, threads=threads))))
    tape = math.nan if history.tape_bytes is None else history.tape_bytes
    return {**last, "eval_train_loss": trained, "tape_bytes": tape,
            "seconds": history.seconds, "curve": list(history.train_loss)}
