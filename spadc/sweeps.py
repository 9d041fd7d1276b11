"""Sweeps (INTERFACE.md, "Past one machine"): `spadc.sweep` and `spadc sweep`, one `fit` per cell of a
grid of settings and per seed, spread over a cluster's workers when one is given.

Invariants:
- A grid key is a keyword of the estimator (`keep`, `sigma`, `particles`...), of the optimiser
  (`lr`, `momentum`...) or of `fit` (`epochs`, `batch_size`; `steps` for a model without inputs,
  whose runs are `fit(None, steps=)`), `estimator` / `optimizer` (names), or
  the name of a `const` of the file (its value replaced, the model compiled once per value); any
  other key is a `SpadcError` naming the ones accepted. The seed of a run draws its initial
  params, its shuffles and its random streams, as `fit(seed=)` does.
- A run is a whole `fit` in one process: on a cluster, one worker runs it from the model's
  ahead-of-time library (the JIT's kernels, bit for bit), so a sweep's rows are the same with and
  without a cluster; a run whose worker is lost is run again on the worker that replaces it
  (spadc/cluster.py).
- Rows come back in grid order (the grid's keys in the order given, the last varying fastest, then
  the seeds), whatever order the workers finish in.
"""

from __future__ import annotations

import csv
import inspect
import io
import itertools
import math
import re

import numpy as np

from spadrt.es import ES, PES
from spadrt.estimators import RAD, SPAD, Exact
from spadrt.files import atomic_write
from spadrt.optim import OPTIMIZERS
from spadrt.remote import train_run

from .errors import Source, SpadcError

ESTIMATORS = {"exact": Exact, "rad": RAD, "spad": SPAD, "es": ES, "pes": PES}
FIT_KEYS = ("epochs", "batch_size")  # (with data; without, `steps`)
METRICS = ("train_loss", "eval_train_loss", "val_loss", "val_accuracy", "train_accuracy", "tape_bytes", "seconds")
CONST = re.compile(r"^const (\w+) = .*$", re.M)


def _keywords(cls) -> set[str]:
    return {name for name in inspect.signature(cls).parameters if name != "name"}


def _cells(grid: dict, estimator: str, optimizer: str, consts=(), fit_keys=FIT_KEYS) -> list[dict]:
    """Every combination of the grid's values, each checked against what it configures."""
    if not isinstance(grid, dict) or not grid:
        raise SpadcError("grid must be a dict of setting name to a list of values, e.g. {\"lr\": [1e-3, 3e-3]}")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise SpadcError(f"grid[{key!r}] must be a non-empty list of values, got {values!r}")
    cells = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for cell in cells:
        name, optimiser = cell.get("estimator", estimator), cell.get("optimizer", optimizer)
        if name not in ESTIMATORS:
            raise SpadcError(f"unknown estimator {name!r}; expected {', '.join(ESTIMATORS)}")
        if optimiser not in OPTIMIZERS:
            raise SpadcError(f"unknown optimizer {optimiser!r}; expected {', '.join(OPTIMIZERS)}")
        accepted = _keywords(ESTIMATORS[name]) | _keywords(OPTIMIZERS[optimiser]) | set(fit_keys) | set(consts) | {
            "estimator", "optimizer"}
        unknown = sorted(set(cell) - accepted)
        if unknown:
            raise SpadcError(f"grid key {unknown[0]!r} configures nothing of a run with estimator {name!r} and "
                             f"optimizer {optimiser!r}; accepted: {', '.join(sorted(accepted))}")
    return cells


def run_settings(cell: dict, estimator: str, optimizer: str, fit_options: dict) -> tuple[object, object, dict]:
    """(the estimator, the optimiser, fit's keywords) of one cell."""
    name, optimiser = cell.get("estimator", estimator), cell.get("optimizer", optimizer)
    make = ESTIMATORS[name]
    chosen = make(**{k: v for k, v in cell.items() if k in _keywords(make)})
    optimiser_class = OPTIMIZERS[optimiser]
    stepper = optimiser_class(**{k: v for k, v in cell.items() if k in _keywords(optimiser_class)})
    return chosen, stepper, {**fit_options, **{k: cell[k] for k in (*FIT_KEYS, "steps") if k in cell}}


def sweep(path: str, data: dict, grid: dict, estimator: str = "exact", seeds: int = 3, cluster=None,
          optimizer: str = "adam", epochs: int = 5, batch_size: int = 32, validation: dict | None = None,
          validation_split: float | None = None, dtype: str = "f64", steps: int | None = None) -> list[dict]:
    """One row per run: the cell's settings, `seed`, the METRICS at the last epoch and `curve` (the
    train loss per epoch). A grid key that names a `const` of the file sets it (the model compiled
    once per value). `cluster`: a spadc.Ray whose workers run the runs. A model without inputs
    takes `data=None` and trains for `steps` optimiser steps (`fit(None, steps=)`: each step is
    an epoch of the curve; `epochs` and `batch_size` do not apply)."""
    from .api import _model
    from .frontend import read_source, source_directory
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise SpadcError(f"seeds must be a positive integer, got {seeds!r}")
    source = read_source(path)
    consts = {found.group(1): found.group(0) for found in CONST.finditer(source.text)}
    if data is None:
        if steps is None and "steps" not in grid:
            raise SpadcError("a model without inputs trains for a number of steps: sweep(path, None, grid, steps=N)")
        if validation is not None or validation_split is not None:
            raise SpadcError("a model without inputs has no validation data: give neither validation= nor "
                             "validation_split= with data=None")
        cells = _cells(grid, estimator, optimizer, consts, fit_keys=("steps",))
        fit_options = {"steps": steps}
    elif steps is not None:
        raise SpadcError("steps= is for models without inputs (data=None); with data, give epochs=")
    else:
        cells = _cells(grid, estimator, optimizer, consts)
        fit_options = {"epochs": epochs, "batch_size": batch_size}
    if validation is not None:
        fit_options["validation"] = validation
    if validation_split is not None:
        fit_options["validation_split"] = validation_split
    models: dict[tuple, object] = {}

    def model_of(cell: dict):
        values = tuple((name, cell[name]) for name in consts if name in cell)
        if values not in models:
            text = source.text
            for name, value in values:
                text = text.replace(consts[name], f"const {name} = {value!r}", 1)
            models[values] = _model(Source(source.name, text), source_directory(source), dtype, None, True)
        return models[values]

    runs = [(cell, seed, model_of(cell), run_settings(cell, estimator, optimizer, fit_options)) for cell in cells
            for seed in range(seeds)]
    if cluster is None:
        results = [train_run(model, data, *settings, seed, threads=None) for _, seed, model, settings in runs]
    else:
        results = cluster.train_runs(data, [(model, settings, seed) for _, seed, model, settings in runs])
    return [{**cell, "seed": seed, **result} for (cell, seed, _, _), result in zip(runs, results)]


def write_csv(rows: list[dict], path: str):
    """The rows without their curves, one line each, written atomically."""
    columns = [key for key in rows[0] if key != "curve"]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "table") as f:
        f.write(text.getvalue().encode("utf-8"))


def _settings(rows: list[dict]) -> list[str]:
    return [key for key in rows[0] if key not in METRICS and key not in ("seed", "curve")]


def _by_cell(rows: list[dict]) -> dict[tuple, list[dict]]:
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in _settings(rows)), []).append(row)
    return cells


def summary(rows: list[dict]) -> str:
    """A markdown table: one line per cell, each metric's mean ± standard deviation over its seeds."""
    keys = _settings(rows)
    shown = [m for m in METRICS if any(not math.isnan(row[m]) for row in rows)]
    lines = ["| " + " | ".join(keys + ["runs"] + shown) + " |", "|" + "---|" * len(keys) + "---:|" * (1 + len(shown))]
    for cell, members in _by_cell(rows).items():
        values = [np.array([row[m] for row in members], dtype=float) for m in shown]
        lines.append("| " + " | ".join([str(v) for v in cell] + [str(len(members))]
                                       + [f"{v.mean():.4g} ± {v.std():.2g}" for v in values]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str):
    """The train loss per epoch of each cell, its mean over the seeds."""
    from spadrt.plot import loss_curve
    keys = _settings(rows)
    series = {", ".join(f"{k}={v}" for k, v in zip(keys, cell)):
              list(np.mean([row["curve"] for row in members], axis=0)) for cell, members in _by_cell(rows).items()}
    loss_curve(path, series, title="train loss (mean over seeds)")
