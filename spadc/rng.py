"""The counter-based random generator of ESTIMATORS.md section 5, NumPy reference version.

A draw is a pure function of its key (seed, step, site, sample, loop iteration, entry): no state,
so the same key gives the same bits however a batch is split or whatever order samples run in.
The compiled code emits the same arithmetic; this module is its oracle.

Invariants:
- `mix64` is SplitMix64's finaliser on unsigned 64-bit integers (wrapping arithmetic).
- `stream(seed, step, site, sample, iteration)` folds the key words in that order; entry `j` of a
  stream is `mix64(stream + GOLDEN * (j + 1))`, and its uniform double is the top 53 bits / 2^53,
  in [0, 1).
- `site_id` is stable across runs, machines and working directories: it hashes the file's base
  name, the line and column of the op, the call sites it was inlined through, which of the ops
  lowered from that place it is, and the operand.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(z):
    """SplitMix64 finaliser, on a Python int or a uint64 array."""
    if isinstance(z, np.ndarray):
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
            return z ^ (z >> np.uint64(31))
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def stream(seed: int, step: int, site: int, sample: int, iteration: tuple[int, ...] = ()) -> int:
    h = mix64((seed & _MASK) + GOLDEN)
    for word in (step, site, sample, len(iteration), *iteration):
        h = mix64(h ^ mix64((word & _MASK) + GOLDEN))
    return h


def uniform(key: int, count: int, start: int = 0) -> np.ndarray:
    """Entries start..start+count-1 of a stream, as doubles in [0, 1)."""
    entries = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = mix64(np.uint64(key) + np.uint64(GOLDEN) * entries)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def site_id(loc, inlined_at=(), operand: int = 0, op: str = "") -> int:
    """`op` tells apart the ops one source location lowers to (`mse` is a sub, a mul, a sum...)."""
    chain = [loc, *inlined_at]
    text = "/".join(f"{os.path.basename(l.source.name)}:{l.line}:{l.col}" for l in chain) + f"{op}#{operand}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
