"""The memory limit: how many bytes one model may ask for, checked before anything is allocated.

Invariants:
- The limit is `max_memory=` where a call takes it, else the environment variable
  `SPADC_MAX_MEMORY` (bytes, or a number with K, M, G or T: powers of 1024), else the machine's
  physical memory. A size over the limit is a `SpadcError` saying how many bytes were needed, where
  they come from and how to change the limit; nothing is allocated first.
"""

from __future__ import annotations

import os

from .errors import SpadcError

ENVIRONMENT_VARIABLE = "SPADC_MAX_MEMORY"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text, what: str) -> int:
    """A byte count from an int or a string such as "512M" or "2G"."""
    if isinstance(text, bool):
        raise SpadcError(f"{what} must be a number of bytes, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
        unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
        try:
            value = int(float(raw[:len(raw) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise SpadcError(f"{what} must be a number of bytes such as 4G or 512M, got {text!r}") from None
    if value <= 0:
        raise SpadcError(f"{what} must be positive, got {text!r}")
    return value


def max_memory(override=None) -> int:
    if override is not None:
        return parse_bytes(override, "max_memory")
    if os.environ.get(ENVIRONMENT_VARIABLE):
        return parse_bytes(os.environ[ENVIRONMENT_VARIABLE], ENVIRONMENT_VARIABLE)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no physical limit to read
        return 1 << 62


def format_bytes(count: int) -> str:
    if count < 1024:
        return f"{count:,} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        count /= 1024
        if count < 1024 or unit == "PiB":
            return f"{count:,.1f} {unit}"


def limit_text(limit: int) -> str:
    return (f"the memory limit of {format_bytes(limit)} (set `max_memory=`, `--max-memory` or the environment "
            f"variable {ENVIRONMENT_VARIABLE} to change it)")
