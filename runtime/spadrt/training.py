"""Training: `Model.fit` (INTERFACE.md). Shuffled minibatches, one compiled call per minibatch
gradient, any estimator, an optimiser step, parameter bounds, validation per epoch.

Invariants:
- Reproducible: the same seed gives the same shuffles, the same random streams and so the same
  final parameters, bit for bit.
- Step `s` (counted over the whole run) keys the estimator's random stream (`step=s`, and the
  minibatch's position as `sample_offset`); a SPAD estimator instead advances its own counter,
  once per step, so its evaluation steps fall every `refresh` steps of training.
- Training steps run in training mode (dropout on); validation runs in evaluation mode.
- A non-finite loss stops training; `History.stopped` says at which step, and a `TrainingStopped`
  warning says it too.
- A train loss that rises above DIVERGENCE_FACTOR times its best (an epoch's mean; without data, a
  step's loss) is warned about once per run (`Diverging`): training goes on, as asked.
- Ctrl-C (KeyboardInterrupt) raises `Interrupted`, still a KeyboardInterrupt, carrying the history
  so far and one line saying where training stopped; `on_epoch` checkpoints are never half-written
  (Model.save writes atomically).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .calls import check_threads
from .errors import SpadcError, SpadcWarning
from .estimators import SPAD, resolve
from .arguments import check_seed, user_inputs
from .optim import resolve as resolve_optimizer
from .precondition import resolve as resolve_preconditioner


DIVERGENCE_FACTOR = 10  # a train loss this many times its best (above it by 9 times its magnitude)
DIVERGENCE_FLOOR = 1e-6  # ... and above it by this share of the first loss's magnitude (or of 1): not noise near 0


class TrainingStopped(SpadcWarning):
    """Training stopped early: the loss became NaN or infinite."""


class Diverging(SpadcWarning):
    """The train loss rose far above its best: the step size is probably too large."""


class _DivergenceWatch:
    """Warns once when a loss rises past DIVERGENCE_FACTOR times the best one seen (`active`: False
    where successive losses are not comparable, as in episodes of carried state)."""

    def __init__(self, active: bool = True):
        self.best: tuple[float, str] | None = None
        self.scale: float | None = None
        self.warned = not active

    def see(self, loss: float, where: str):
        if self.scale is None:
            self.scale = DIVERGENCE_FLOOR * max(abs(loss), 1.0)
        if self.best is None or loss < self.best[0]:
            self.best = (loss, where)
            return
        best, at = self.best
        if not self.warned and loss - best > max((DIVERGENCE_FACTOR - 1) * abs(best), self.scale):
            self.warned = True
            warnings.warn(Diverging(f"training is diverging: the train loss rose from {best:.4g} ({at}) to {loss:.4g} "
                                    f"({where}), more than {DIVERGENCE_FACTOR} times its best; lower the learning "
                                    f"rate (or raise the preconditioner's damping)"), stacklevel=4)


class Interrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C): `history` holds the epochs completed, `where` the step."""

    def __init__(self, history: "History", where: str):
        super().__init__(where)
        self.history = history
        self.where = where


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)  # mean over each epoch's minibatches
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)  # classifiers only
    train_accuracy: list[float] = field(default_factory=list)  # classifiers only, in evaluation mode
    tape_bytes: float | None = None  # per sample, as the compiled code counted it on the last step
    steps: int = 0
    seconds: float = 0.0
    stopped: str | None = None  # why training stopped early, if it did


def fit(model, data: dict | None, epochs: int = 20, batch_size: int = 32, optimizer="adam", estimator=None,
        validation: dict | None = None, seed: int = 0, schedule=None, quiet: bool = True,
        stream=None, on_epoch=None, steps: int | None = None, threads: int | None = None,
        horizon: int | None = None, precondition=None, validation_split: float | None = None,
        cluster=None) -> History:
    """Train on `data`; a model without inputs trains with `data=None` for `steps` steps (each step
    is then an epoch of its own: its loss is recorded and `on_epoch` called). `threads`: cores each
    minibatch is spread over (default all; the same result for any number). `horizon`: for a model
    with `state` and no inputs, the calls in an episode: the state each call ends with is carried
    to the next (truncated backpropagation through time with the exact gradient), and it is reset
    to its initial value every `horizon` calls. `precondition`: a spadc.precondition method (or its
    name): the optimiser is given P g instead of g (CURVATURE.md section 3). `validation_split`: a
    share in (0, 1) of `data` held out (drawn with `seed`) as the validation set, when
    `validation` is not given. `cluster`: a `spadc.Ray` whose workers compute each minibatch's
    gradient (data-parallel; the same bits as without it, spadc/cluster.py)."""
    seed = check_seed(seed, "seed")
    threads = check_threads(threads)
    if horizon is not None:
        horizon = _count("horizon", horizon)
        if not model.layout.get("state"):
            raise SpadcError("horizon= is for models with `state`: this model has none")
        if data is not None:
            raise SpadcError("episodes of carried state (horizon=) are for models without inputs (data=None) so "
                             "far: with data, every call starts from the states' initial values")
    for name, value in (("optimizer", optimizer), ("estimator", estimator), ("precondition", precondition),
                        ("schedule", schedule)):
        if isinstance(value, type):
            raise SpadcError(f"{name}= got the class {value.__name__}: give an instance, such as {value.__name__}()")
    estimator = resolve(estimator)
    optimizer = resolve_optimizer(optimizer)
    precondition = resolve_preconditioner(precondition)
    if precondition is not None:
        precondition.start(model)
    if data is None:
        return _fit_without_inputs(model, steps, optimizer, estimator, seed, schedule, quiet, stream, on_epoch,
                                   threads, horizon, precondition, cluster)
    if steps is not None:
        raise SpadcError("steps= is for models without inputs (data=None); with data, give epochs=")
    epochs, batch_size = _count("epochs", epochs), _count("batch_size", batch_size)
    train = _dataset(model, data, "data")
    valid = _dataset(model, validation, "validation") if validation is not None else None
    if validation_split is not None:
        if valid is not None:
            raise SpadcError("give validation= or validation_split=, not both")
        train, valid = _split(train, validation_split, seed)
    n = len(next(iter(train.values())))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED])))
    bar = _Progress(None if quiet else (stream or sys.stderr))
    history = History()
    gradient = np.empty_like(model.flat_params)  # every step's gradient, written here
    position = {"step": 0, "epoch": 0}
    watch = _DivergenceWatch()
    held = cluster.holding(train) if cluster is not None else None  # sent to the workers once
    # With a cluster, the workers themselves step where they can (the optimiser with them, the same bits)
    trainer = held.trainer(model, estimator, optimizer, precondition) if held else None
    classifier = model.layout["classifier"] is not None
    plans = _epoch_plans(rng, n, epochs, batch_size, optimizer, schedule)
    if trainer is not None:
        plans = trainer.run(plans, epochs - 1, seed, classifier, looks=on_epoch is not None or valid is not None,
                            changes=on_epoch is not None)
    with _interruptible(history, bar, lambda: f"interrupted at step {position['step']} "
                                              f"(epoch {position['epoch'] + 1} of {epochs})"):
        try:
            for epoch, lr, batches, taken in plans:
                position["epoch"] = epoch
                where = [f"step {step} (epoch {epoch + 1}, minibatch {k + 1})"
                         for k, (step, _, _) in enumerate(batches)]
                if trainer is not None:
                    steps, correct = taken
                    losses = (_stepped(history, loss, measured, place) for (loss, measured), place in zip(steps, where))
                else:
                    losses = (_take_step(model, optimizer, lr, history, bar, place, precondition, step, gradient,
                                         estimator=estimator, training=True, seed=seed, sample_offset=first,
                                         threads=threads,
                                         inputs={name: values[batch] for name, values in train.items()},
                                         cluster=held.batch(batch) if held else None,
                                         **({} if isinstance(estimator, SPAD) else {"step": step}))
                              for (step, first, batch), place in zip(batches, where))
                total, seen = 0.0, 0
                for (step, _, batch), loss in zip(batches, losses):
                    if loss is None:
                        return history
                    total += loss * len(batch)
                    seen += len(batch)
                    position["step"] = step + 1
                    bar.update(epoch, epochs, seen / n, total / seen)
                history.train_loss.append(total / seen)
                watch.see(total / seen, f"epoch {epoch + 1}")
                if valid is not None:
                    history.val_loss.append(float(np.mean(model.loss(inputs=valid, threads=threads))))
                    if classifier:
                        history.val_accuracy.append(accuracy(model, valid, threads))
                if classifier:  # (a cluster's workers share the pass: it was a third of an epoch)
                    history.train_accuracy.append(correct / n if trainer else held.accuracy(model) if held else
                                                  accuracy(model, train, threads))
                history.steps = position["step"]
                bar.epoch_done(epoch, epochs, history)
                if on_epoch is not None:
                    on_epoch(epoch, history)
        finally:
            plans.close()  # (a cluster's run puts its last state into the model)
            if trainer is not None:
                trainer.close()
    return history


def _epoch_plans(rng, n: int, epochs: int, batch_size: int, optimizer, schedule):
    """For each epoch: (its number, learning rate, steps: (number, first row's position in the
    epoch, row indices), None), drawn in order (a cluster draws the next one before this one ends)."""
    per_epoch = -(-n // batch_size)
    for epoch in range(epochs):
        order = rng.permutation(n)
        # (the steps taken before it: every epoch's, a fit stopped early has no epoch after)
        lr = schedule(optimizer.lr, epoch * per_epoch, epoch, epochs) if schedule else optimizer.lr
        yield epoch, lr, [(epoch * per_epoch + k, first, order[first:first + batch_size])
                          for k, first in enumerate(range(0, n, batch_size))], None


def _fit_without_inputs(model, steps, optimizer, estimator, seed, schedule, quiet, stream, on_epoch,
                        threads, horizon=None, precondition=None, cluster=None) -> History:
    if user_inputs(model.layout):
        names = ", ".join(i["name"] for i in user_inputs(model.layout))
        raise SpadcError(f"the model has inputs ({names}): fit needs data, a dict of arrays named after them")
    if steps is None:
        raise SpadcError("a model without inputs trains for a number of steps: fit(None, steps=N)")
    steps = _count("steps", steps)
    bar = _Progress(None if quiet else (stream or sys.stderr))
    history = History()
    gradient = np.empty_like(model.flat_params)  # every step's gradient, written here
    watch = _DivergenceWatch(active=horizon is None)  # each episode's steps see other losses
    with _interruptible(history, bar, lambda: f"interrupted at step {history.steps} of {steps}"):
        state = None  # None: the states' initial values
        for step in range(steps):
            lr = schedule(optimizer.lr, step, step, steps) if schedule else optimizer.lr
            options = {} if isinstance(estimator, SPAD) else {"step": step}
            if horizon is not None:
                if step % horizon == 0:
                    state = None  # a new episode
                carried = state  # this truncation starts where the last one ended, with the params it had
                state = model.forward(state=carried, training=True, seed=seed, step=step, threads=threads).state
                options["state"] = carried
            loss = _take_step(model, optimizer, lr, history, bar, f"step {step}", precondition, step, gradient,
                              estimator=estimator,
                              training=True, seed=seed, threads=threads, cluster=cluster, **options)
            if loss is None:
                break
            history.train_loss.append(loss)
            watch.see(loss, f"step {step}")
            history.steps = step + 1
            bar.update(0, 1, (step + 1) / steps, loss)
            if on_epoch is not None:
                on_epoch(step, history)
    return history


def _take_step(model, optimizer, lr: float, history: History, bar, where: str, precondition, number: int,
               out: np.ndarray, **grad_options) -> float | None:
    """Optimiser step `number` (from 0) with a gradient (preconditioned if asked), then the bounds;
    None, with `history.stopped` saying where, when the loss is not finite. The gradient is written
    into `out`, the run's own buffer (consumed by this step: a fresh array of a large model's size
    costs page faults every step)."""
    loss, flat, measured = model._flat_grad_into(out, **grad_options)
    if not _finite(history, loss, where):
        return None
    if precondition is not None:
        flat = precondition.direction(model, flat, grad_options, number)
    optimizer.step(model.flat_params, flat, lr)
    model.project_params()
    history.tape_bytes = measured
    return loss


def _stepped(history: History, loss: float, measured: float, where: str) -> float | None:
    """A step the workers took (spadc/cluster_training.py), as `_take_step` gives it."""
    if not _finite(history, loss, where):
        return None
    history.tape_bytes = measured
    return loss


def _finite(history: History, loss: float, where: str) -> bool:
    """Whether a step's loss is finite; if not, training stops, `history.stopped` and a warning say where."""
    if math.isfinite(loss):
        return True
    history.stopped = f"the loss became {loss} at {where}; training stopped"
    warnings.warn(TrainingStopped(history.stopped), stacklevel=6)  # (the caller of Model.fit)
    return False


@contextmanager
def _interruptible(history: History, bar, where):
    """Times the run into `history.seconds`; Ctrl-C becomes `Interrupted` saying `where()`."""
    start = time.perf_counter()
    try:
        yield
    except KeyboardInterrupt:
        history.seconds = time.perf_counter() - start
        bar.message(where())
        raise Interrupted(history, where()) from None
    finally:
        history.seconds = time.perf_counter() - start


def accuracy(model, data: dict, threads: int | None = None) -> float:
    """The share of samples whose largest logit is their label (the loss is cross_entropy(logits, label))."""
    return correct(model, data, threads) / len(np.asarray(data[model.layout["classifier"]["label"]]))


def correct(model, data: dict, threads: int | None = None, params=None) -> int:
    """How many samples' largest logit is their label, at the model's params or `params` (a count:
    the same however the samples are shared out, spadc/cluster.py)."""
    classifier = model.layout["classifier"]
    if classifier is None:
        raise SpadcError("accuracy needs a classifier: a model whose loss is cross_entropy(logits, label) or "
                         "mse(scores, onehot(label, n))")
    result = model.forward(params=params, inputs=data, threads=threads)
    logits = result.outputs.get(classifier["logits"], getattr(result, "hidden", {}).get(classifier["logits"]))
    return int(np.sum(np.argmax(logits, axis=-1) == np.asarray(data[classifier["label"]])))


def _split(data: dict, share, seed: int) -> tuple[dict, dict]:
    """(train, validation): `share` of the samples, drawn with `seed`, held out."""
    if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)) or not 0 < share < 1:
        raise SpadcError(f"validation_split must be a share in (0, 1), got {share!r}")
    n = len(next(iter(data.values())))
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - share)))
    if cut in (0, n):
        raise SpadcError(f"validation_split={share} of {n} samples leaves one of the two sets empty")
    return ({k: v[order[:cut]] for k, v in data.items()}, {k: v[order[cut:]] for k, v in data.items()})


def _count(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise SpadcError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dataset(model, data, what: str) -> dict:
    """The model's inputs from a dict of arrays whose first axis is the sample."""
    if not isinstance(data, dict):
        raise SpadcError(f"{what} must be a dict of arrays named after the model's inputs")
    declared = [i["name"] for i in user_inputs(model.layout)]
    missing = [name for name in declared if name not in data]
    if missing:
        raise SpadcError(f"{what} has no array `{missing[0]}` (the model's inputs are {', '.join(declared)})")
    arrays = {name: np.asarray(data[name]) for name in declared}
    counts = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    for spec in user_inputs(model.layout):
        array = arrays[spec["name"]]
        if array.ndim != len(spec["shape"]) + 1 or list(array.shape[1:]) != spec["shape"]:
            raise SpadcError(f"{what}: `{spec['name']}` must have shape [samples, {', '.join(map(str, spec['shape']))}]"
                             .replace(", ]", "]") + f", got {list(array.shape)}")
    if len(set(counts.values())) != 1:
        raise SpadcError(f"{what}: the arrays have different numbers of samples: {counts}")
    if next(iter(counts.values())) == 0:
        raise SpadcError(f"{what} has no samples")
    return arrays


class _Progress:
    """Progress on `stream`: on a terminal a tqdm bar with the running loss (tqdm is an optional
    extra: `pip install "spadc[progress]"`); otherwise, or without tqdm, one plain line per epoch,
    never carriage returns in a file or a pipe."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None
        terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.tqdm = tqdm if terminal else None

    def update(self, epoch: int, epochs: int, done: float, loss: float):
        if self.tqdm is None:
            return
        if self.bar is None:
            self.bar = self.tqdm(total=1.0, file=self.stream, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                                 bar_format="{desc} {bar} {percentage:3.0f}%{postfix}")
        self.bar.n = done
        self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        self.bar.refresh()

    def epoch_done(self, epoch: int, epochs: int, history: History):
        if self.stream is None:
            return
        line = f"epoch {epoch + 1}/{epochs}  train loss {history.train_loss[-1]:.4f}"
        if history.val_loss:
            line += f"  val loss {history.val_loss[-1]:.4f}"
        if history.val_accuracy:
            line += f"  val accuracy {100 * history.val_accuracy[-1]:.1f}%"
        self.message(line)

    def message(self, text: str):
        if self.stream is None:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.stream.write(text + "\n")
        self.stream.flush()
