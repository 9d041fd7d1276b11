"""The front end as one call: a .spad file or text to a checked, optimised IR program.

Invariants:
- Every failure caused by the user's program or file is a `SpadcError` with a position; nothing
  else escapes for a user mistake.
"""

from __future__ import annotations

import os

from spadrt.files import path_argument

from . import passes
from .check.program import check_source
from .errors import Source, SpadcError, read_text
from .ir.core import Program


def read_source(path) -> Source:
    """A file's text as a Source named by its path (a str or os.PathLike)."""
    path = path_argument(path, "the source file")
    try:
        return Source(path, read_text(path))
    except SpadcError as error:
        raise SpadcError(f"{path}: {error.bare_message}") from None


def check_file(path: str) -> Program:
    """Parse and check a file; imports are relative to its directory."""
    source = read_source(path)
    return check_source(source, source_directory(source))


def source_directory(source: Source) -> str:
    """Where a file's imports are found: its own directory."""
    return os.path.dirname(os.path.abspath(source.name))


def check_text(text: str, name: str = "<source>") -> Program:
    """Parse and check source text; imports are relative to the working directory."""
    return check_source(text_source(text, name), os.getcwd())


def text_source(text, name) -> Source:
    """Source text given from Python, its types checked: `text` a str, `name` a str."""
    if not isinstance(text, str):
        hint = " (decode bytes first: text.decode())" if isinstance(text, (bytes, bytearray)) else ""
        raise SpadcError(f"the source text must be a str, got {type(text).__name__}{hint}")
    if not isinstance(name, str):
        raise SpadcError(f"name= must be a str (the file name shown in messages), got {type(name).__name__}")
    return Source(name, text)


def lower(program: Program, dump_after: str | None = None, verify_each: bool = False) -> Program:
    """Run the pass pipeline (spadc/passes) on a checked program."""
    return passes.run(program, dump_after=dump_after, verify_each=verify_each)
