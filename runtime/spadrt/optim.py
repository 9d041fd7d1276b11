"""Optimisers with PyTorch's update rules, and learning-rate schedules; NumPy only.

Each optimiser updates a flat parameter array in place from a flat gradient, one `step` at a time,
keeping its own state (momentum buffers, moment estimates). The formulas, and the order of their
floating-point operations, follow torch.optim (SGD, Adam, AdamW, Adagrad) so results match it.

Invariants:
- `step(params, grads, lr)` is the whole update; the caller projects parameters into their
  `in [lo, hi]` boxes afterwards (Model.fit does, after every step).
- A schedule maps (step, epoch) to a learning rate; `None` keeps the optimiser's own `lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import SpadcError


def _positive(name: str, value, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SpadcError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise SpadcError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")
    return value


class _WithScratch:
    """An optimiser whose work buffers (`SCRATCH`: their defaults) are not state: pickled (sent to
    a cluster's workers, or back from them) it leaves them out, and its `step` makes them again."""
    SCRATCH: dict = {}

    def __getstate__(self):
        return {**self.__dict__, **self.SCRATCH}


@dataclass
class SGD(_WithScratch):
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    dampening: float = 0.0
    _buffer: np.ndarray | None = field(default=None, init=False, repr=False)
    _copy: np.ndarray | None = field(default=None, init=False, repr=False)
    SCRATCH = {"_copy": None}

    def __post_init__(self):
        self.lr = _positive("lr", self.lr)
        self.momentum = _positive("momentum", self.momentum, allow_zero=True)
        self.weight_decay = _positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise SpadcError("nesterov momentum needs momentum > 0 and no dampening")

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float):
        if self.weight_decay:
            g = grads + self.weight_decay * params
        else:  # a copy into a buffer of its own (a fresh one would page in the model's size each step)
            if self._copy is None or self._copy.shape != grads.shape:
                self._copy = np.empty_like(grads)
            g = self._copy
            np.copyto(g, grads)
        if self.momentum:
            if self._buffer is None:
                self._buffer = g.copy()
            else:
                self._buffer *= self.momentum
                self._buffer += (1 - self.dampening) * g
            g = g + self.momentum * self._buffer if self.nesterov else self._buffer
        if g is self._buffer:
            params -= lr * g
        else:  # g is this step's own array: scaled where it is (the same bits as lr * g)
            g *= lr
            params -= g


@dataclass
class Adam(_WithScratch):
    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = field(default=False, repr=False)  # AdamW
    _m: np.ndarray | None = field(default=None, init=False, repr=False)
    _v: np.ndarray | None = field(default=None, init=False, repr=False)
    _t: int = field(default=0, init=False, repr=False)
    _work: tuple = field(default=(), init=False, repr=False)
    SCRATCH = {"_work": ()}

    def __post_init__(self):
        self.lr = _positive("lr", self.lr)
        self.eps = _positive("eps", self.eps)
        self.weight_decay = _positive("weight_decay", self.weight_decay, allow_zero=True)
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise SpadcError(f"betas must be in [0, 1), got {self.betas}")

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float):
        b1, b2 = self.betas
        if self._m is None:
            self._m, self._v = np.zeros_like(params), np.zeros_like(params)
        if not self._work:
            self._work = (np.empty_like(params), np.empty_like(params))
        self._t += 1
        g = grads
        if self.weight_decay:
            if self.decoupled:
                params *= 1 - lr * self.weight_decay
            else:
                g = grads + self.weight_decay * params
        # The same operations in the same order as the plain expressions (the same bits), into two
        # work buffers: temporaries of a large model's size cost more than the arithmetic.
        work, other = self._work
        np.subtract(g, self._m, out=work)
        work *= 1 - b1
        self._m += work  # torch's lerp: m + (1 - b1) (g - m)
        self._v *= b2
        np.multiply(g, g, out=work)
        work *= 1 - b2
        self._v += work
        bias1 = 1 - b1 ** self._t
        bias2 = 1 - b2 ** self._t
        np.sqrt(self._v, out=other)
        other /= math.sqrt(bias2)
        other += self.eps  # the denominator
        np.divide(self._m, other, out=work)
        work *= lr / bias1
        params -= work  # torch's addcdiv


def AdamW(lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> Adam:
    """Adam with decoupled weight decay (Loshchilov and Hutter), as torch.optim.AdamW."""
    return Adam(lr, tuple(betas), eps, weight_decay, decoupled=True)


@dataclass
class Adagrad(_WithScratch):
    lr: float = 0.01
    lr_decay: float = 0.0
    weight_decay: float = 0.0
    eps: float = 1e-10
    initial_accumulator_value: float = 0.0
    _sum: np.ndarray | None = field(default=None, init=False, repr=False)
    _t: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        self.lr = _positive("lr", self.lr)
        self.eps = _positive("eps", self.eps)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float):
        if self._sum is None:
            self._sum = np.full_like(params, self.initial_accumulator_value)
        self._t += 1
        g = grads + self.weight_decay * params if self.weight_decay else grads
        clr = lr / (1 + (self._t - 1) * self.lr_decay)
        self._sum += g * g
        params -= clr * (g / (np.sqrt(self._sum) + self.eps))


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "adagrad": Adagrad}


def settings(optimizer) -> dict:
    """One of these optimisers' hyperparameters by name: what a caller may change between steps."""
    return {f.name: getattr(optimizer, f.name) for f in fields(optimizer) if f.init}


def state(optimizer) -> dict:
    """Its state by name: what its steps change (its work buffers left out)."""
    return {f.name: getattr(optimizer, f.name) for f in fields(optimizer)
            if not f.init and f.name not in optimizer.SCRATCH}


# ---- schedules ------------------------------------------------------------------------

@dataclass(frozen=True)
class StepLR:
    """lr * gamma ** (epoch // step_size), as torch.optim.lr_scheduler.StepLR stepped per epoch."""
    step_size: int
    gamma: float = 0.1

    def __call__(self, lr: float, step: int, epoch: int, total_epochs: int) -> float:
        return lr * self.gamma ** (epoch // self.step_size)


@dataclass(frozen=True)
class CosineLR:
    """eta_min + (lr - eta_min) (1 + cos(pi epoch / T)) / 2, T = the run's epochs unless given, as
    torch.optim.lr_scheduler.CosineAnnealingLR stepped per epoch."""
    t_max: int | None = None
    eta_min: float = 0.0

    def __call__(self, lr: float, step: int, epoch: int, total_epochs: int) -> float:
        t_max = self.t_max or total_epochs
        return self.eta_min + (lr - self.eta_min) * (1 + math.cos(math.pi * min(epoch, t_max) / t_max)) / 2


def resolve(optimizer) -> object:
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise SpadcError(f"unknown optimizer {optimizer!r}; expected {', '.join(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer]()
    if not hasattr(optimizer, "step"):
        raise SpadcError(f"an optimizer must be spadc.SGD, Adam, AdamW, Adagrad or a name, got {optimizer!r}")
    return optimizer
