"""Parameter initialisers, from a parameter's layout entry and a seed; NumPy only.

Invariants:
- Each parameter draws from its own stream, keyed by (seed, the parameter's name), so adding or
  reordering parameters does not change the others' initial values, and the same seed gives the
  same bits on every machine (NumPy's PCG64 with SeedSequence is stable across versions).
- `glorot`: uniform on [-a, a], a = sqrt(6 / (fan_in + fan_out)), fan_in the last dimension and
  fan_out the first (both 1 for a scalar).
- Values are projected into the parameter's `in [lo, hi]` box, as after every optimiser step.
"""

from __future__ import annotations

import zlib

import numpy as np


def initial_value(name: str, shape, kind: str, args, bounds, seed: int) -> np.ndarray:
    shape = tuple(shape)
    if kind == "value":
        value = np.broadcast_to(np.asarray(args[0], dtype=np.float64), shape).copy()
    else:
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())])))
        if kind == "normal":
            value = args[0] + args[1] * generator.standard_normal(shape)
        elif kind == "uniform":
            value = generator.uniform(args[0], args[1], shape)
        elif kind == "glorot":
            fan_in, fan_out = (shape[-1], shape[0]) if shape else (1, 1)
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            value = generator.uniform(-limit, limit, shape)
        else:
            raise ValueError(f"unknown initialiser {kind}")
    if bounds is not None:
        value = np.clip(value, *bounds)
    return np.asarray(value, dtype=np.float64)
