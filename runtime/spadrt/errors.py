"""The one error type users see, shared by the compiler (spadc) and the runtime (spadrt).

A message with a place starts ``FILE:LINE:COL: error: `` and quotes the source line with a caret
under the column. A place is anything with `file`, `line`, `col` and `source_line` attributes.
"""

from __future__ import annotations


class SpadcError(Exception):
    """A user mistake: in a .spad program, in values passed from Python, or on the command line."""

    def __init__(self, message: str, loc=None, notes=()):
        self.bare_message = message
        self.loc = loc
        self.notes = tuple(notes)
        super().__init__(render(message, loc, self.notes))


class SpadcWarning(UserWarning):
    """A likely mistake that still compiles (its message is placed like an error's)."""


def render(message: str, loc, notes=(), kind: str = "error") -> str:
    if loc is None:
        return message
    parts = [f"{loc.file}:{loc.line}:{loc.col}: {kind}: {message}", *_quote(loc)]
    for note, note_loc in notes:
        parts += [f"{note_loc.file}:{note_loc.line}:{note_loc.col}: note: {note}", *_quote(note_loc)]
    return "\n".join(parts)


def _quote(loc) -> list[str]:
    return [f"    {loc.source_line.expandtabs(1)}", f"    {' ' * (loc.col - 1)}^"]
