"""Loading a library built by `spadc build`: the same `Model` as a JIT-compiled one, NumPy only.

Invariants:
- A library whose ABI version differs from this runtime's is refused with a message saying so.
- The layout (shapes, offsets, workspace sizes: what keeps the kernels in bounds) is trusted only
  if its digest equals the one compiled into the library's code at build time; a library whose
  layout was edited or damaged is refused.
- Only the gradient variants the library was built with exist; asking for another is a
  `SpadcError` naming the estimator and how to build it in.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import warnings

from .abi import ABI_VERSION
from .errors import SpadcError
from .files import path_argument
from .estimators import SEEDED, SamplingWarning, variant_key
from .model import Model


def layout_digest(layout_json: bytes) -> int:
    """The first 8 bytes of the layout's SHA-256, as an unsigned 64-bit integer."""
    return int.from_bytes(hashlib.sha256(layout_json).digest()[:8], "little")


_VARIANT = re.compile(r"^(\w+)\.keep([^.]+(?:\.\d+)?(?:e-?\d+)?)\.(\w+)\.(\w+)\.")


def _described(key: str) -> str:
    """A built variant (estimators.variant_key) in the command line's words (a VJP's variant as the
    loss's: `--entry vjp` builds one for each)."""
    key = key.split(SEEDED)[0]
    found = _VARIANT.match(key)
    if found is None:
        return "the exact gradient" if key == "exact" else "SPAD's scoring kernel"
    sites, keep, draw, _ = found.groups()
    return f"rad and spad at --keep {keep} --sites {sites} --draw {draw}"


def load(path: str) -> Model:
    path = path_argument(path, "the library path")
    try:
        library = ctypes.CDLL(os.path.abspath(path))
    except OSError as error:
        raise SpadcError(f"cannot load {path}: {error}") from None
    try:
        version = ctypes.CFUNCTYPE(ctypes.c_int64)(("spadrt_abi_version", library))()
    except AttributeError:
        raise SpadcError(f"{path} is not a library built by `spadc build` (no spadrt_layout)") from None
    if version != ABI_VERSION:
        raise SpadcError(f"{path} was built for ABI version {version}, but this runtime reads version "
                         f"{ABI_VERSION}: rebuild it with this version's `spadc build`")
    try:
        layout_text = ctypes.CFUNCTYPE(ctypes.c_char_p)(("spadrt_layout", library))()
        digest = ctypes.CFUNCTYPE(ctypes.c_uint64)(("spadrt_layout_digest", library))()
    except AttributeError:
        raise SpadcError(f"{path} is not a library built by `spadc build` (no spadrt_layout)") from None
    if layout_digest(layout_text) != digest:
        raise SpadcError(f"{path} is damaged: its layout does not match the digest compiled into its code "
                         f"(was the file edited?); rebuild it with `spadc build`")
    try:
        layout = json.loads(layout_text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SpadcError(f"{path} is damaged: its layout cannot be read ({error})") from None

    def address(symbol: str) -> int:
        return ctypes.cast(getattr(library, symbol), ctypes.c_void_p).value

    def provide(sampling, score, policy, seeded=()):
        key = variant_key(sampling, score, policy, seeded)
        entry = layout["variants"].get(key)
        if entry is None:
            built = "; ".join(sorted({_described(k) for k in layout["variants"]}))
            rebuild = "spadc build FILE.spad -o ... --estimators exact,rad,spad"
            if sampling is not None:
                rebuild += f" --keep {sampling.keep} --sites {sampling.sites} --draw {sampling.draw}"
            raise SpadcError(f"{path} has no gradient kernel for this estimator (it holds: {built}); rebuild it "
                             f"with `{rebuild}`")
        for message in entry.get("warnings", ()):
            warnings.warn(message, SamplingWarning, stacklevel=5)
        return entry, address(entry["symbol"]), library

    def provide_kernel(kind: str):
        """A derived kernel the library was built with (`--entry`), or None."""
        entry = layout.get("kernels", {}).get(kind)
        return None if entry is None else (entry, address(entry["symbol"]), library)

    def library_bytes(estimator, entries) -> tuple[bytes, dict]:
        """This very library, for a cluster's workers: a variant or kernel it lacks is named when asked."""
        with open(path, "rb") as f:
            return f.read(), layout

    model = Model(layout, address(layout["forward"]["symbol"]), provide, keepalive=library,
                  kernel_provider=provide_kernel, library=library_bytes)
    model.library_digest = digest
    return model
