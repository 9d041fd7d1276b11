"""Initial parameter values of a checked program (the initialisers live in spadrt.init)."""

from __future__ import annotations

import numpy as np

from spadrt.init import initial_value

from .ir.core import Program


def initial_params(program: Program, seed: int = 0) -> dict[str, np.ndarray]:
    return {d.name: initial_value(d.name, d.value.type.shape, d.init.kind, d.init.args, d.bounds, seed)
            for d in program.params}
