"""Evolution strategies (ESTIMATORS.md section 8): gradients from forward passes only.

`ES(sigma, particles, antithetic)` estimates the gradient of the Gaussian-smoothed loss
`E[L(theta + eps)]`, `eps ~ N(0, sigma^2 I)`, as `1/(N sigma^2) sum_i L(theta + eps_i) eps_i`, or
with antithetic pairs `sum_pairs (L+ - L-) eps / (N sigma^2)`. It keeps no tape and needs no
derivative: any loss works, even a piecewise-constant one.

Invariants:
- Perturbations are drawn from Philox4x64-10 (section 5) with key (seed, ES_SITE) and counter
  (entry block, 0, pair or particle, step), normals by Box-Muller on consecutive uniforms: the same
  seed and step give the same bits, whatever the thread count.
- All particles see the same data and the same random keys (dropout): only the parameters differ.
- Particles run as one batched call of the forward kernel with a parameter vector per particle
  (`forward_particles`), split across threads by particles.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
from dataclasses import dataclass

import numpy as np

from . import calls
from .errors import SpadcError

ES_SITE = int.from_bytes(hashlib.blake2b(b"spadc.ES", digest_size=8).digest(), "little")
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ES:
    """Evolution strategies on the forward kernel: the gradient of the Gaussian-smoothed loss."""
    sigma: float = 0.1
    particles: int = 64
    antithetic: bool = True
    name: str = "es"

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not (
                math.isfinite(self.sigma) and self.sigma > 0):
            raise SpadcError(f"sigma must be a positive number, got {self.sigma!r}")
        if isinstance(self.particles, bool) or not isinstance(self.particles, (int, np.integer)) or self.particles < 1:
            raise SpadcError(f"particles must be a positive integer, got {self.particles!r}")
        if not isinstance(self.antithetic, bool):
            raise SpadcError(f"antithetic must be True or False, got {self.antithetic!r}")
        if self.antithetic and self.particles % 2:
            raise SpadcError(f"antithetic ES pairs its particles: particles must be even, got {self.particles}")

    @property
    def sampling(self):
        return None  # no gradient kernel: forward passes only


def normals(seed: int, step: int, stream: int, size: int) -> np.ndarray:
    """`size` standard normals of one perturbation (`stream`: its particle, or pair)."""
    pairs = (size + 1) // 2
    words = _words(seed, step, stream, 2 * pairs)
    uniform = (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    radius = np.sqrt(-2.0 * np.log1p(-uniform[0::2]))  # 1 - u is in (0, 1]: the log is finite
    angle = 2.0 * np.pi * uniform[1::2]
    out = np.empty(2 * pairs)
    out[0::2], out[1::2] = radius * np.cos(angle), radius * np.sin(angle)
    return out[:size]


def _words(seed: int, step: int, stream: int, count: int) -> np.ndarray:
    """Entries 0..count-1 of the stream keyed (seed, ES_SITE), counter (block, 0, stream, step):
    NumPy's Philox increments its counter before each block, hence the - 1."""
    counter = ((stream & _MASK64) << 128 | (step & _MASK64) << 192) - 1
    generator = np.random.Philox(counter=counter & ((1 << 256) - 1), key=(seed & _MASK64) | ES_SITE << 64)
    blocks = (count + 3) // 4
    return generator.random_raw(4 * blocks)[:count]


def perturbations(estimator: ES, seed: int, step: int, size: int) -> np.ndarray:
    """The N x size perturbations (sigma times normals); antithetic pairs are (eps_j, -eps_j)."""
    sigma, n = float(estimator.sigma), estimator.particles
    if estimator.antithetic:
        half = np.stack([normals(seed, step, j, size) for j in range(n // 2)]) * sigma
        return np.stack([half, -half], axis=1).reshape(n, size)
    return np.stack([normals(seed, step, i, size) for i in range(n)]) * sigma


def estimate(estimator: ES, losses: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """The gradient estimate from each particle's loss and perturbation."""
    n, sigma2 = estimator.particles, float(estimator.sigma) ** 2
    if estimator.antithetic:
        differences = losses[0::2] - losses[1::2]
        return (differences[:, None] * eps[0::2]).sum(axis=0) / (n * sigma2)
    return (losses[:, None] * eps).sum(axis=0) / (n * sigma2)


def es_gradient(model, estimator: ES, step: int, *, prepared, flat, training, seed, offset, threads):
    """(mean loss at the params, the ES estimate, the particle kernel's layout entry) for one call
    of `Model.grad`: every particle on every data row, in one batched kernel call per chunk of
    particles."""
    entry, function = model._particles()
    eps = perturbations(estimator, seed, step, flat.size)
    # Row 0 is the params themselves (the loss `grad` reports), then one row per particle.
    thetas = np.ascontiguousarray(np.vstack([flat[None, :], flat[None, :] + eps]), dtype=model._float)
    rows, count = prepared.n, estimator.particles + 1
    losses = np.empty((count, rows), dtype=model._float)
    outputs = [np.empty((count * rows, *o["shape"]), dtype=model._dtype(o["dtype"])) for o in model.layout["outputs"]]

    def chunk(first: int, last: int):  # particles first..last-1, every data row each
        addresses = (ctypes.c_void_p * max(len(outputs), 1))(*[o[first * rows:].ctypes.data for o in outputs])
        scratch = model._scratch.take()
        try:
            code = function(thetas[first].ctypes.data, prepared.pointers, prepared.strides, (last - first) * rows,
                            int(offset), int(bool(training)), int(seed) & _MASK64, int(step) & _MASK64,
                            losses[first].ctypes.data, addresses, scratch.workspace(entry["workspace"]),
                            scratch.status.ctypes.data, rows, flat.size)
            model._raise_on_failure(code, prepared.batched, entry["checks"], scratch.status)
        finally:
            model._scratch.give(scratch)

    calls.run_chunks(chunk, count, threads)
    means = losses.astype(np.float64).mean(axis=1)
    gradient = estimate(estimator, means[1:], eps).astype(model._float)
    return float(means[0]), gradient, {**entry, "tape_bytes": 0}

