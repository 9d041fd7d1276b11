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


def clean_mappings(smaps: str, library: str = LIBRARY) -> list[tuple[int, int]]:
    """(start, length) of the mappings of `library` in a /proc/PID/smaps text that are not writable and
    hold no page written by this process."""
    found, current = [], None
    for line in smaps.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:  # a mapping's header
            if current is not None and current["clean"]:
                found.append((current["start"], current["length"]))
            start, end = (int(part, 16) for part in fields[0].split("-"))
            readonly = "w" not in fields[1]
            current = {"start": start, "length": end - start,
                       "clean": readonly and len(fields) >= 6 and library in fields[5]}
        elif current is not None and fields[:1] in (["Private_Dirty:"], ["Anonymous:"]) and fields[1] != "0":
            current["clean"] = False
    if current is not None and current["clean"]:
        found.append((current["start"], current["length"]))
    return found


def release_compiler_pages() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        with open("/proc/self/smaps") as f:
            mappings = clean_mappings(f.read())
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in mappings:
        madvise(start, length, MADV_DONTNEED)  # (a refusal leaves the pages resident: harmless)
