"""Gradient preconditioners behind one interface, in the manner of ASDL (CURVATURE.md section 3):
a method is a curvature matrix, a representation and a solver, and the step is
`theta <- theta - lr * P g` with `P ~ (C + damping)^-1`.

    spadc.precondition.Identity()                       plain gradients
    Newton(damping)                                     full Hessian (<= 5000 params), solve(H + damping I, g)
    NewtonCG(damping, iters, ggn=False)                 conjugate gradient on H (or the GGN) + damping I
    DiagFisher(damping, fisher)                         g / (F_ii + damping), F the (empirical) Fisher
    KFAC(damping, fisher)                               A (x) B per dense layer with pi-damping, diagonal elsewhere
    Shampoo(damping)                                    L^(-1/4) G R^(-1/4) per matrix, one factor per dimension

Shared options: `damping`; `ema`, the decay of the running curvature (None: each update replaces
it; Shampoo's statistics are then sums, `L += G G^T`, as in the paper); `interval`, the steps
between curvature updates (the curvature in between is the last one computed; for the
matrix-free NewtonCG, products are taken at the params and minibatch of the last update);
`warmup`, the steps of plain gradients before preconditioning starts.

Invariants:
- A preconditioner is stateful (its running curvature): one per training run; `fit` calls `start`
  with the model, which checks the model and clears the state.
- Curvature is always of the exact loss (no estimator), on the minibatch of the step that
  updates it, with that step's keys (dropout masks as the gradient's). Dense linear algebra is
  NumPy's, in float64.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import curvature
from .errors import SpadcError

PROGRESS_SECONDS = 60.0  # between progress lines of a long curvature update
NEWTON_LIMIT = 5000  # params: the dense Hessian has NEWTON_LIMIT^2 entries (200 MB)
SHAMPOO_START = 1e-12  # Shampoo's statistics start at this times I
FACTOR_DAMPING_FLOOR = 1e-7  # the least damping of a K-FAC factor (ASDL's)


@dataclass(eq=False)
class Preconditioner:
    damping: float = 1e-3
    ema: float | None = None
    interval: int = 1
    warmup: int = 0
    name = "identity"
    state: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise SpadcError(f"{self.name}: damping must be a finite number >= 0, got {self.damping!r}")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and 0 <= self.ema < 1):
            raise SpadcError(f"{self.name}: ema must be in [0, 1) or None, got {self.ema!r}")
        for option in ("interval", "warmup"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if option == "interval" else 0):
                raise SpadcError(f"{self.name}: {option} must be an integer >= {1 if option == 'interval' else 0}, "
                                 f"got {value!r}")

    def start(self, model):
        """Check that the method applies to the model, and forget any earlier curvature."""
        self.state = {}

    def direction(self, model, grad: np.ndarray, call: dict, step: int) -> np.ndarray:
        """P g for this step; `call` holds the minibatch and keys (the gradient call's arguments)."""
        if step < self.warmup:
            return grad
        if "curvature" not in self.state or (step - self.warmup) % self.interval == 0:
            self._update(model, _curvature_call(call))
        return self._apply(model, np.asarray(grad, dtype=np.float64)).astype(grad.dtype, copy=False)

    def _update(self, model, call: dict):
        self.state["curvature"] = True

    def _apply(self, model, grad: np.ndarray) -> np.ndarray:
        return grad

    def _average(self, key: str, new):
        """The running curvature: `new` at the first update, else ema * old + (1 - ema) * new."""
        old = self.state.get(key)
        if old is None or self.ema is None:
            self.state[key] = new
        else:
            self.state[key] = self.ema * old + (1 - self.ema) * new
        return self.state[key]


def _curvature_call(call: dict) -> dict:
    """The gradient call's arguments a curvature call takes (not the estimator: curvature is exact)."""
    return {k: v for k, v in call.items() if k in ("inputs", "training", "seed", "step", "sample_offset", "threads",
                                                   "state", "params")}


class Identity(Preconditioner):
    """Plain gradients through the same calls."""


@dataclass(eq=False)
class Newton(Preconditioner):
    """The full Hessian (damped) solved against the gradient: `count` Hessian products per update."""
    name = "newton"

    def start(self, model):
        super().start(model)
        count = model.layout["param_count"]
        if count > NEWTON_LIMIT:
            raise SpadcError(f"Newton builds the full Hessian, and this model has {count:,} parameters, more than "
                             f"{NEWTON_LIMIT:,}: use NewtonCG (matrix-free) or a structured preconditioner")

    def _update(self, model, call):
        """One Hessian product per parameter (seconds on thousands of params): a line on stderr every
        PROGRESS_SECONDS while it lasts, so that a long update, even under --quiet, is not taken for a hang."""
        count = model.layout["param_count"]
        started = last = time.perf_counter()
        columns = []
        for j in range(count):
            columns.append(model.flat_hvp(np.eye(1, count, j)[0], **call)[2])
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                print(f"newton: building the Hessian, {j + 1:,} of {count:,} products ({now - started:.0f} s)",
                      file=sys.stderr, flush=True)
        hessian = self._average("hessian", np.array(columns, dtype=np.float64).T)
        self.state["system"] = hessian + self.damping * np.eye(count)
        self.state["curvature"] = True

    def _apply(self, model, grad):
        return np.linalg.solve(self.state["system"], grad)


@dataclass(eq=False)
class NewtonCG(Preconditioner):
    """Conjugate gradient on (H + damping I) d = g, `iters` products at most; stops early at a
    relative residual `tol`, and at a direction of non-positive curvature (keeping the iterate, or
    g itself on the first iteration), as truncated Newton methods do."""
    iters: int = 10
    tol: float = 1e-10
    ggn: bool = False
    name = "newton_cg"

    def _update(self, model, call):
        self.state["call"] = call  # products at this step's params and minibatch until the next update
        self.state["params"] = np.array(model.flat_params, dtype=model.flat_params.dtype)
        self.state["curvature"] = True

    def _product(self, model, v):
        call = dict(self.state["call"], params=self.state["params"])
        product = model.flat_ggn_vp(v, **call) if self.ggn else model.flat_hvp(v, **call)[2]
        return np.asarray(product, dtype=np.float64) + self.damping * v

    def _apply(self, model, grad):
        x = np.zeros_like(grad)
        residual, p = grad.copy(), grad.copy()
        rho = float(residual @ residual)
        stop = (self.tol * np.linalg.norm(grad)) ** 2
        for k in range(self.iters):
            if rho <= stop:
                break
            ap = self._product(model, p)
            curvature = float(p @ ap)
            if curvature <= 0:  # H is not positive definite along p
                return grad if k == 0 else x
            alpha = rho / curvature
            x += alpha * p
            residual -= alpha * ap
            rho, previous = float(residual @ residual), rho
            p = residual + (rho / previous) * p
        return x


@dataclass(eq=False)
class DiagFisher(Preconditioner):
    fisher: str = "empirical"
    name = "diag_fisher"

    def _update(self, model, call):
        tapped = curvature.taps(model, fisher=self.fisher, **call)
        self._average("diagonal", curvature.fisher_diagonal(model, tapped))
        self.state["curvature"] = True

    def _apply(self, model, grad):
        return grad / (self.state["diagonal"] + self.damping)


@dataclass(eq=False)
class KFAC(Preconditioner):
    """Per dense layer (spadc/ad/taps.py) the Kronecker factors A (x) B of the Fisher, inverted
    with pi-damping; every other param by the Fisher's diagonal."""
    fisher: str = "empirical"
    name = "kfac"

    def _update(self, model, call):
        tapped = curvature.taps(model, fisher=self.fisher, **call)
        inverses = {}
        for weight, (a, b) in curvature.kfac_factors(tapped).items():
            a = self._average(f"A.{weight}", a)
            b = self._average(f"B.{weight}", b)
            inverses[weight] = kfac_inverses(a, b, self.damping)
        self.state["inverses"] = inverses
        self.state["layers"] = [(layer.weight, layer.bias) for layer in tapped.layers]
        self._average("diagonal", curvature.fisher_diagonal(model, tapped, layers=False))
        self.state["curvature"] = True

    def _apply(self, model, grad):
        out = grad / (self.state["diagonal"] + self.damping)  # the params outside the layers
        where = {p["name"]: (p["offset"], p["size"], p["shape"]) for p in model.layout["params"]}
        for weight, bias in self.state["layers"]:
            offset, size, shape = where[weight]
            g = grad[offset:offset + size].reshape(shape)
            if bias:
                b_offset, b_size, _ = where[bias]
                g = np.concatenate([g, grad[b_offset:b_offset + b_size, None]], axis=1)
            a_inverse, b_inverse = self.state["inverses"][weight]
            d = b_inverse @ g @ a_inverse
            if bias:
                out[b_offset:b_offset + b_size] = d[:, -1]
                d = d[:, :-1]
            out[offset:offset + size] = d.ravel()
        return out


def kfac_inverses(a: np.ndarray, b: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """(A + pi sqrt(damping) I)^-1 and (B + sqrt(damping) / pi I)^-1, pi = sqrt((tr A / dim A) /
    (tr B / dim B)) (Martens and Grosse 2015, section 6.3); pi = 1 when a trace is zero. Each
    factor's damping is at least FACTOR_DAMPING_FLOOR (as ASDL's), so that a factor whose trace is
    tiny beside the other's (a layer whose deltas vanish) still inverts."""
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise SpadcError("K-FAC: a Kronecker factor is not finite (the activations or gradients overflowed): "
                         "lower the learning rate or raise the damping")
    mean_a, mean_b = np.trace(a) / len(a), np.trace(b) / len(b)
    pi = math.sqrt(mean_a / mean_b) if mean_a > 0 and mean_b > 0 else 1.0
    if not math.isfinite(pi) or pi == 0:
        pi = 1.0
    root = math.sqrt(damping)
    damping_a, damping_b = max(pi * root, FACTOR_DAMPING_FLOOR), max(root / pi, FACTOR_DAMPING_FLOOR)
    return np.linalg.inv(a + damping_a * np.eye(len(a))), np.linalg.inv(b + damping_b * np.eye(len(b)))


@dataclass(eq=False)
class Shampoo(Preconditioner):
    """Per param tensor of rank r (a scalar as a vector of one), one statistic per dimension k,
    `L_k += G_(k) G_(k)^T` (G_(k) the unfolding along k); the direction is G multiplied along each
    dimension k by (L_k + damping I)^(-1/(2r)): L^(-1/4) G R^(-1/4) for a matrix."""
    name = "shampoo"

    def direction(self, model, grad, call, step):
        self.state["grad"] = np.asarray(grad, dtype=np.float64)  # the statistics are of the gradient itself
        return super().direction(model, grad, call, step)

    def _update(self, model, call):
        roots = {}
        for p in model.layout["params"]:
            g = _tensor(self.state["grad"], p)
            for k in range(g.ndim):
                unfolded = np.moveaxis(g, k, 0).reshape(g.shape[k], -1)
                key = f"L{k}.{p['name']}"
                statistic = self.state.get(key, SHAMPOO_START * np.eye(g.shape[k]))
                update = unfolded @ unfolded.T
                self.state[key] = statistic + update if self.ema is None else self.ema * statistic + (1 - self.ema) * update
                roots[(p["name"], k)] = shampoo_root(self.state[key], self.damping, 2 * g.ndim)
        self.state["roots"] = roots
        self.state["curvature"] = True

    def _apply(self, model, grad):
        out = np.empty_like(grad)
        for p in model.layout["params"]:
            g = _tensor(grad, p)
            for k in range(g.ndim):  # multiply dimension k by its root
                g = np.moveaxis(np.tensordot(self.state["roots"][(p["name"], k)], g, axes=([1], [k])), 0, k)
            out[p["offset"]:p["offset"] + p["size"]] = g.ravel()
        return out


def _tensor(flat: np.ndarray, p: dict) -> np.ndarray:
    return flat[p["offset"]:p["offset"] + p["size"]].reshape(p["shape"] or [1])


def shampoo_root(statistic: np.ndarray, damping: float, order: int) -> np.ndarray:
    """(statistic + damping I)^(-1/order), by eigh of the symmetric statistic."""
    values, vectors = np.linalg.eigh(statistic + damping * np.eye(len(statistic)))
    return (vectors * np.maximum(values, np.finfo(float).tiny) ** (-1.0 / order)) @ vectors.T


NAMES = {"identity": Identity, "newton": Newton, "newton_cg": NewtonCG, "newtoncg": NewtonCG,
         "diag_fisher": DiagFisher, "diagfisher": DiagFisher, "kfac": KFAC, "shampoo": Shampoo}


def resolve(precondition) -> Preconditioner | None:
    """A preconditioner from an instance, a name (`"kfac"`), or None."""
    if precondition is None or isinstance(precondition, Preconditioner):
        return precondition
    if isinstance(precondition, str) and precondition.lower() in NAMES:
        return NAMES[precondition.lower()]()
    raise SpadcError(f"unknown preconditioner {precondition!r}; choose one of identity, newton, newton_cg, "
                     "diag_fisher, kfac, shampoo")
