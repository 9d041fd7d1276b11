"""Parameter initialisers: fill and literal values, `normal`, `uniform`, `glorot`, from a seed.

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

from .ir.core import ParamDecl, Program


def initial_value(decl: ParamDecl, seed: int) -> np.ndarray:
    shape = decl.value.type.shape
    kind, args = decl.init.kind, decl.init.args
    if kind == "value":
        value = np.array(args[0], dtype=np.float64).reshape(shape)
    else:
        generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(decl.name.encode())])))
        if kind == "normal":
            value = args[0] + args[1] * generator.standard_normal(shape)
        elif kind == "uniform":
            value = generator.uniform(args[0], args[1], shape)
        else:
            fan_in, fan_out = (shape[-1], shape[0]) if shape else (1, 1)
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            value = generator.uniform(-limit, limit, shape)
    if decl.bounds is not None:
        value = np.clip(value, *decl.bounds)
    return np.asarray(value, dtype=np.float64)


def initial_params(program: Program, seed: int = 0) -> dict[str, np.ndarray]:
    return {decl.name: initial_value(decl, seed) for decl in program.params}
