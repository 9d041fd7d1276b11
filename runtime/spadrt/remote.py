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

import math
import os
import shutil
import tempfile

import numpy as np

from . import calls, es, reduction
from .arguments import prepare
from .library import load
from .training import correct


class Worker:
    """The libraries a driver gave this worker, by the driver's key for each."""

    def __init__(self):
        self._directory = tempfile.mkdtemp(prefix="spadc-worker-")
        self.models = {}

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
        model = self.models[key]
        training, seed, step, offset = options
        values = {**values, **{name: column[indices] for name, column in zip(names, columns)}}
        prepared = prepare(model.layout, values, model._dtype)
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

    def correct(self, key: str, flat: np.ndarray, indices, names, *columns) -> int:
        """How many of rows `indices` of a held data set (its inputs `names`, `columns`) the model
        classifies right at params `flat` (spadrt.training.correct)."""
        values = {name: column[indices] for name, column in zip(names, columns)}
        return correct(self.models[key], values, threads=1, params=flat)

    def population(self, key: str, flat: np.ndarray, values: dict, estimator, options: tuple, first_block: int,
                   last_block: int, center: bool, indices=None, names=(), *columns) -> tuple[float | None, dict]:
        """ES blocks first_block..last_block-1 on every row of `values` (or, as for `gradient`, of
        held `columns`): (the mean loss at the params themselves if `center`, else None; the sums
        of the tree's nodes within those blocks)."""
        model = self.models[key]
        training, seed, step, offset = options
        values = {**values, **{name: column[indices] for name, column in zip(names, columns)}}
        call = dict(prepared=prepare(model.layout, values, model._dtype), flat=flat, training=training, seed=seed,
                    offset=offset, threads=1)
        loss = es.center_loss(model, step=step, **call)[0] if center else None
        return loss, es.block_nodes(model, estimator, step, first_block, last_block, **call)

    def train(self, key: str, data: dict, estimator, optimizer, fit_options: dict, seed: int) -> dict:
        """One run of a sweep (spadc/sweeps.py) on the library `key`."""
        return train_run(self.models[key], data, estimator, optimizer, fit_options, seed, threads=1)


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
