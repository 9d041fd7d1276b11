"""The front end as one call: a .spad file or text to a checked, optimised IR program.

Invariants:
- Every failure caused by the user's program or file is a `SpadcError` with a position; nothing
  else escapes for a user mistake.
"""

from __future__ import annotations

import os

from . import passes
from .check.program import check_source
from .errors import Source, SpadcError, read_text
from .ir.core import Program


def read_source(path: str) -> Source:
    try:
        return Source(path, read_text(path))
    except SpadcError as error:
        raise SpadcError(f"{path}: {error.bare_message}") from None


def check_file(path: str) -> Program:
    """Parse and check a file; imports are relative to its directory."""
    return check_source(read_source(path), os.path.dirname(os.path.abspath(path)))


def check_text(text: str, name: str = "<source>") -> Program:
    """Parse and check source text; imports are relative to the working directory."""
    return check_source(Source(name, text), os.getcwd())


def lower(program: Program, dump_after: str | None = None, verify_each: bool = False) -> Program:
    """Run the pass pipeline (spadc/passes) on a checked program."""
    return passes.run(program, dump_after=dump_after, verify_each=verify_each)
