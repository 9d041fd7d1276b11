"""Give back the resident pages of LLVM's own code after a compile.

An optimisation pipeline touches tens of megabytes of LLVM's machine code and read-only tables
(libllvmlite.so): mapped from the file, they stay counted in the process's resident memory long
after the compile, beside the workspace of a long loop's gradient that then runs for minutes (the
reaction-diffusion gradient at 10^7 steps: 26 MB of LLVM pages beside 49.5 MB of workspace).
`release_compiler_pages()` tells the kernel that this process does not need them now
(MADV_DONTNEED); the next compile reads them back from the page cache (minor faults, a few ms).

Invariants:
- Only mappings of libllvmlite.so that cannot be written and hold no page this process has written
  (no private dirty page, no anonymous page) are released: their pages read back exactly as they
  were. A mapping that relocation wrote (RELRO) or that is writable is left alone, whole.
- Linux only; anywhere else, or if /proc or madvise is unavailable, nothing happens.
"""

from __future__ import annotations

import ctypes
import sys

MADV_DONTNEED = 4
LIBRARY = "libllvmlite"


def mappings(smaps, library: str = "") -> list[dict]:
    """The mappings of a /proc/PID/smaps text (a string, or its lines: a file is read line by line,
    so that no copy of the whole text is made) whose path contains `library`: start, length, perms,
    path and their kB fields."""
    found, current = [], None
    for line in smaps.splitlines() if isinstance(smaps, str) else smaps:
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:  # a mapping's header
            path = fields[5] if len(fields) >= 6 else ""
            current = None
            if library in path:
                start, end = (int(part, 16) for part in fields[0].split("-"))
                current = {"start": start, "length": end - start, "perms": fields[1], "path": path, "kb": {}}
                found.append(current)
        elif current is not None and len(fields) >= 2 and fields[0].endswith(":") and fields[1].isdigit():
            current["kb"][fields[0][:-1]] = int(fields[1])
    return found


def clean_mappings(smaps, library: str = LIBRARY) -> list[tuple[int, int]]:
    """(start, length) of the mappings of `library` in a /proc/PID/smaps text (or its lines) that are
    not writable and hold no page written by this process."""
    return [(m["start"], m["length"]) for m in mappings(smaps, library)
            if "w" not in m["perms"] and not m["kb"].get("Private_Dirty") and not m["kb"].get("Anonymous")]


def release_compiler_pages() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/smaps") as f:
            mappings = clean_mappings(f)  # (line by line, LLVM's alone: all of a 200 KB text parsed took 1.7 MB)
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in mappings:
        madvise(start, length, MADV_DONTNEED)  # (a refusal leaves the pages resident: harmless)
