"""The pass pipeline: the one place that lists, in order, what runs between checking and codegen.

Each pass is a function from `Program` to a new `Program` (IR is never mutated) with a one-line
description. `run(program, dump_after=NAME)` returns the IR after that pass, for `spadc ir
--dump-after`, and `verify_each=True` runs the verifier after every pass (tests do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir.core import Program
from ..ir.verify import verify
from .dce import eliminate_dead_code
from .fuse import fuse_outer_accumulation


@dataclass(frozen=True)
class Pass:
    name: str
    description: str
    run: Callable[[Program], Program]


PIPELINE: tuple[Pass, ...] = (
    Pass("dce", "remove operations whose results are never used and that cannot fail", eliminate_dead_code),
    Pass("fuse", "fuse add(acc, outer(a, b)) into one in-place outer_add", fuse_outer_accumulation),
)

PASS_NAMES = ("check",) + tuple(p.name for p in PIPELINE)


def run(program: Program, dump_after: str | None = None, verify_each: bool = False) -> Program:
    if verify_each:
        verify(program)
    if dump_after == "check":
        return program
    for stage in PIPELINE:
        program = stage.run(program)
        if verify_each:
            verify(program)
        if stage.name == dump_after:
            return program
    return program
