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
  (`particles`), split across threads by particles.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from . import calls, reduction
from .errors import SpadcError
from .local_state import ProcessLocalState

ES_SITE = int.from_bytes(hashlib.blake2b(b"spadc.ES", digest_size=8).digest(), "little")
_MASK64 = (1 << 64) - 1


def _check_settings(estimator):
    if isinstance(estimator.sigma, bool) or not isinstance(estimator.sigma, (int, float)) or not (
            math.isfinite(estimator.sigma) and estimator.sigma > 0):
        raise SpadcError(f"sigma must be a positive number, got {estimator.sigma!r}")
    if (isinstance(estimator.particles, bool) or not isinstance(estimator.particles, (int, np.integer))
            or estimator.particles < 1):
        raise SpadcError(f"particles must be a positive integer, got {estimator.particles!r}")
    if not isinstance(estimator.antithetic, bool):
        raise SpadcError(f"antithetic must be True or False, got {estimator.antithetic!r}")
    if estimator.antithetic and estimator.particles % 2:
        raise SpadcError(f"antithetic pairs its particles: particles must be even, got {estimator.particles}")


@dataclass(frozen=True)
class ES:
    """Evolution strategies on the forward kernel: the gradient of the Gaussian-smoothed loss."""
    sigma: float = 0.1
    particles: int = 64
    antithetic: bool = True
    name: str = "es"

    def __post_init__(self):
        _check_settings(self)

    @property
    def sampling(self):
        return None  # no gradient kernel: forward passes only


@dataclass(eq=False)
class PES(ProcessLocalState):
    """Persistent ES (Vicol, Metz, Sohl-Dickstein, ICML 2021) for a model with `state`: each particle
    keeps its own state and the sum `xi` of its perturbations over the episode; the estimate is
    `1/(N sigma^2) sum_i L_i xi_i`, unbiased for the smoothed loss when summed over an episode.

    Stateful, like SPAD: per model, the particles' states and sums. A call with no incoming state
    (`state=None`: an episode's first call, as `fit(..., horizon=H)` makes them) starts a new episode."""
    sigma: float = 0.01
    particles: int = 64
    antithetic: bool = True
    name: str = field(default="pes", init=False)
    memory: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False, repr=False)

    _local = "memory"  # ProcessLocalState

    def __post_init__(self):
        _check_settings(self)

    @property
    def sampling(self):
        return None


def normals(seed: int, step: int, streams, size: int) -> np.ndarray:
    """`size` standard normals of each perturbation in `streams` (its particle, or pair): one row each."""
    pairs = (size + 1) // 2
    words = stream_words(seed, step, streams, 2 * pairs)
    uniform = (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    radius = np.sqrt(-2.0 * np.log1p(-uniform[:, 0::2]))  # 1 - u is in (0, 1]: the log is finite
    angle = 2.0 * np.pi * uniform[:, 1::2]
    out = np.empty((len(words), 2 * pairs))
    out[:, 0::2], out[:, 1::2] = radius * np.cos(angle), radius * np.sin(angle)
    return out[:, :size]


def stream_words(seed: int, step: int, streams, count: int, site: int = ES_SITE) -> np.ndarray:
    """Entries 0..count-1 of each stream keyed (seed, site), counter (block, 0, stream, step): one
    row per stream of `streams`. One generator per thread is pointed at each stream in turn: making a
    `numpy.random.Philox` costs 25 µs, pointing one 5 µs, and an ES draw of a small model is a few
    short streams. NumPy's Philox adds one to its counter before each block: it starts one below."""
    generator = getattr(_philox, "generator", None)
    if generator is None:
        generator = _philox.generator = np.random.Philox()
    state = generator.state
    state["state"]["key"][:] = [seed & _MASK64, site & _MASK64]
    blocks = (count + 3) // 4
    out = np.empty((len(streams), 4 * blocks), dtype=np.uint64)
    for row, stream in enumerate(streams):
        below = ((stream & _MASK64) << 128 | (step & _MASK64) << 192) - 1
        state["state"]["counter"][:] = [(below >> shift) & _MASK64 for shift in (0, 64, 128, 192)]
        generator.state = state
        out[row] = generator.random_raw(4 * blocks)
    return out[:, :count]


_philox = threading.local()


BLOCK = calls.CHUNK  # particles per block: what one task draws, evaluates and sums (even: whole pairs)


def blocks(estimator) -> int:
    """The count of blocks of BLOCK particles (the last may be shorter) a population splits into."""
    return -(-estimator.particles // BLOCK)


def perturbations(estimator, seed: int, step: int, size: int, first: int = 0, last: int | None = None) -> np.ndarray:
    """The perturbations (sigma times normals) of particles first..last-1 (default all), one row
    each; antithetic pairs are (eps_j, -eps_j). `first` and `last` are even under antithetic pairs."""
    sigma, last = float(estimator.sigma), estimator.particles if last is None else last
    if estimator.antithetic:
        half = normals(seed, step, range(first // 2, last // 2), size) * sigma
        return np.stack([half, -half], axis=1).reshape(last - first, size)
    return normals(seed, step, range(first, last), size) * sigma


def block_nodes(model, estimator: ES, step: int, first: int, last: int, *, prepared, flat, training, seed, offset,
                threads) -> dict:
    """The sums, over the nodes of the reduction tree (spadrt/reduction.py) within blocks
    first..last-1, of each particle's mean loss times its perturbation (for a pair, their
    difference times the pair's): each block's perturbations drawn where it is evaluated, so that
    no table of noise and no parameter vector is ever sent."""
    count = blocks(estimator)

    def block(start: int, stop: int):  # blocks first + start .. first + stop - 1
        lo, hi = (first + start) * BLOCK, min((first + stop) * BLOCK, estimator.particles)
        eps = perturbations(estimator, seed, step, flat.size, lo, hi)
        thetas = np.ascontiguousarray(flat[None, :] + eps, dtype=model._float)
        losses, _, _ = run_particles(model, thetas, prepared, training=training, seed=seed, step=step, offset=offset,
                                     threads=1)
        means = losses.astype(np.float64).mean(axis=1)
        if estimator.antithetic:
            return ((means[0::2] - means[1::2])[:, None] * eps[0::2]).sum(axis=0)
        return (means[:, None] * eps).sum(axis=0)

    leaves = calls.run_chunks(block, last - first, threads, 1)
    return reduction.node_sums(first, leaves, count)


def center_loss(model, *, prepared, flat, training, seed, step, offset, threads) -> tuple[float, dict]:
    """(the mean loss at the params themselves, as the particles kernel evaluates it; its entry)."""
    thetas = np.ascontiguousarray(flat[None, :], dtype=model._float)
    losses, _, entry = run_particles(model, thetas, prepared, training=training, seed=seed, step=step, offset=offset,
                                     threads=threads)
    return float(losses.astype(np.float64).mean(axis=1)[0]), entry


def finish(model, estimator: ES, known: dict) -> np.ndarray:
    """The ES estimate from the sums of the reduction tree's nodes (which cover every block)."""
    total = reduction.tree_sum(0, blocks(estimator), known)
    return (total / (estimator.particles * float(estimator.sigma) ** 2)).astype(model._float)


def run_particles(model, thetas: np.ndarray, prepared, *, training, seed, step, offset, threads,
                  own_inputs: dict | None = None) -> tuple[np.ndarray, dict, dict]:
    """Every parameter vector (a row of `thetas`) on every data row: (losses [particles, rows],
    outputs by name [particles * rows, ...], the kernel's layout entry). `own_inputs`: input index ->
    an array of one entry per evaluation (particle-major), e.g. each particle's own state."""
    entry, function = model._particles()
    rows, count = prepared.n, len(thetas)
    losses = np.empty((count, rows), dtype=model._float)
    outputs = [np.empty((count * rows, *o["shape"]), dtype=model._dtype(o["dtype"])) for o in model.layout["outputs"]]
    pointers, strides = list(prepared.pointers), list(prepared.strides)
    eval_strides = [0] * len(pointers)
    for k, array in (own_inputs or {}).items():
        pointers[k], strides[k], eval_strides[k] = array.ctypes.data, 0, array.strides[0]
    pointer_array = (ctypes.c_void_p * len(pointers))(*pointers)
    stride_array = (ctypes.c_int64 * len(strides))(*strides)

    def chunk(first: int, last: int):  # particles first..last-1, every data row each
        moved = pointer_array if not own_inputs else (ctypes.c_void_p * len(pointers))(
            *[(p or 0) + first * rows * e for p, e in zip(pointers, eval_strides)])
        addresses = (ctypes.c_void_p * max(len(outputs), 1))(*[o[first * rows:].ctypes.data for o in outputs])
        evaluation_strides = (ctypes.c_int64 * len(eval_strides))(*eval_strides)
        scratch = model._scratch.take()
        try:
            code = function(thetas[first].ctypes.data, moved, stride_array,
                            (last - first) * rows, int(offset), int(bool(training)), int(seed) & _MASK64,
                            int(step) & _MASK64, losses[first].ctypes.data, addresses,
                            scratch.workspace(entry["workspace"]), scratch.status.ctypes.data, rows,
                            thetas.shape[1], evaluation_strides)
            model._raise_on_failure(code, prepared.batched, entry["checks"], scratch.status)
        finally:
            model._scratch.give(scratch)

    calls.run_chunks(chunk, count, threads)
    return losses, {o["name"]: v for o, v in zip(model.layout["outputs"], outputs)}, entry


def es_gradient(model, estimator: ES, step: int, *, prepared, flat, training, seed, offset, threads):
    """(mean loss at the params, the ES estimate, the particle kernel's layout entry) for one call
    of `Model.grad`: every particle on every data row, a block of particles per task, the blocks'
    sums added by the reduction tree."""
    call = dict(prepared=prepared, flat=flat, training=training, seed=seed, offset=offset, threads=threads)
    loss, entry = center_loss(model, step=step, **call)
    known = block_nodes(model, estimator, step, 0, blocks(estimator), **call)
    return loss, finish(model, estimator, known), {**entry, "tape_bytes": 0}


def pes_gradient(model, estimator: PES, step: int, *, prepared, flat, training, seed, offset, threads,
                 episode_start: bool):
    """(mean loss at the params from the caller's state, the PES estimate, the kernel's entry)."""
    states = [(k, spec) for k, spec in enumerate(model.layout["inputs"]) if spec.get("state")]
    if not states:
        raise SpadcError("PES unrolls a computation in truncations: it needs a model with `state`")
    rows, count = prepared.n, estimator.particles
    record = estimator.memory.get(model)
    if episode_start or record is None or record["rows"] != rows:
        record = {"rows": rows, "xi": np.zeros((count, flat.size)),
                  "states": {k: _rows_of(prepared, k, rows, count) for k, _ in states}}
        estimator.memory[model] = record
    eps = perturbations(estimator, seed, step, flat.size)
    record["xi"] += eps
    thetas = np.ascontiguousarray(np.vstack([flat[None, :], flat[None, :] + eps]), dtype=model._float)
    own = {k: np.ascontiguousarray(np.concatenate([_rows_of(prepared, k, rows, 1), record["states"][k]]))
           for k, _ in states}
    losses, outputs, entry = run_particles(model, thetas, prepared, training=training, seed=seed, step=step,
                                           offset=offset, threads=threads, own_inputs=own)
    for k, spec in states:
        record["states"][k] = np.ascontiguousarray(outputs["_state." + spec["name"]][rows:])
    means = losses.astype(np.float64).mean(axis=1)
    gradient = (means[1:, None] * record["xi"]).sum(axis=0) / (count * float(estimator.sigma) ** 2)
    return float(means[0]), gradient.astype(model._float), {**entry, "tape_bytes": 0}


def _rows_of(prepared, k: int, rows: int, copies: int) -> np.ndarray:
    """Input k of the call as `copies` x `rows` contiguous rows (a shared value repeated)."""
    array, batched = prepared.keepalive[k]
    one = array if batched else np.broadcast_to(array, (rows, *array.shape))
    return np.ascontiguousarray(np.concatenate([one] * copies))

