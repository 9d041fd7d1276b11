"""Source texts and locations; the error type itself lives in the runtime (spadrt.errors).

Invariants:
- Every user mistake, at compile time or at run time, is a `SpadcError`. When it has a place,
  its message starts ``FILE:LINE:COL: `` and goes on with the source line and a caret under
  the column, so the message alone tells the user where to look.
- Lines and columns are 1-based, as editors count them.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field

from spadrt.errors import SpadcError, render  # noqa: F401  (one error type for compiler and runtime)


@dataclass(frozen=True, eq=False)
class Source:
    """A source text and the name it is reported under (a path, or `compile_source`'s name)."""

    name: str
    text: str = field(repr=False)
    # The module's path relative to the main program's directory (its base name for the main
    # program): what random keys hash, so they do not depend on the working directory.
    module: str = ""
    lines: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "lines", tuple(self.text.splitlines()))
        if not self.module:
            object.__setattr__(self, "module", os.path.basename(self.name))

    def line_text(self, line: int) -> str:
        return self.lines[line - 1] if 1 <= line <= len(self.lines) else ""

    def end_loc(self) -> "Loc":
        """The position just after the last token (comments and blanks are not tokens)."""
        for number in range(len(self.lines), 0, -1):
            code = strip_comment(self.lines[number - 1]).rstrip()
            if code:
                return Loc(self, number, len(code) + 1)
        return Loc(self, 1, 1)


def did_you_mean(name: str, candidates) -> str:
    """"; did you mean `x`?" when a candidate is close to `name` (case or a letter or two), else ""."""
    candidates = sorted(set(candidates))
    exact_case = [c for c in candidates if c.lower() == name.lower()]
    close = exact_case or difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return f"; did you mean `{close[0]}`?" if close else ""


def read_text(path: str) -> str:
    """A source file's text: a regular UTF-8 file (a pipe or a device could block forever). Failures
    are a `SpadcError` saying why, without a place."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise SpadcError("not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SpadcError("no such file") from None
    except OSError as error:
        raise SpadcError(error.strerror or str(error)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise SpadcError(f"not UTF-8 text (byte 0x{data[error.start]:02x} on line {line})") from None


def strip_comment(line: str) -> str:
    """The line without its comment; a '#' inside an import's "..." string is not a comment."""
    in_string = False
    for i, ch in enumerate(line):
        if ch == '"':
            in_string = not in_string
        elif ch == "#" and not in_string:
            return line[:i]
    return line


@dataclass(frozen=True, eq=False)
class Loc:
    source: Source
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"

    def __repr__(self) -> str:
        return f"Loc({self})"

    @property
    def file(self) -> str:
        return self.source.name

    @property
    def source_line(self) -> str:
        return self.source.line_text(self.line)

    @property
    def key(self) -> tuple[str, int, int]:
        """A value-comparable identity, used for stable site ids and in tests."""
        return (self.source.name, self.line, self.col)
