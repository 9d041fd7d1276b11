"""The on-disk cache of compiled kernels: a model compiled once loads in milliseconds afterwards.

An entry is the machine code of one kernel (the exact gradient, another gradient variant, the
forward kernel, a product kernel) as an object file, and its layout entry; a model's base entry is
its layout alone (an empty object). In `$SPADC_CACHE_DIR` (default `$XDG_CACHE_HOME/spadc`, else
`~/.cache/spadc`).

Invariants:
- The key hashes everything the code depends on: spadc's version and the text of its own modules
  (so a changed compiler never loads kernels an older one made), llvmlite's and LLVM's versions, the host
  CPU and its features, the float type, the memory limit, the main file's name, directory and
  text, and the kernel set. Imported files are checked when an entry is used: the entry lists
  each file the program read with the SHA-256 of its text, and a file that changed (or is gone)
  makes the entry a miss.
- The object's SHA-256 is in the entry and checked before the code is loaded, so a torn or
  corrupted file is a miss, never code run.
- The directory is the user's alone (made 0700; one owned by someone else, or writable by others,
  is not used, with a warning) and files are 0600. Entries are written to a temporary file and
  renamed, so processes sharing the cache never see half an entry; two writing one key write the
  same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import warnings
from functools import lru_cache

import llvmlite
import llvmlite.binding as llvm

from spadrt import SpadcWarning

from . import __version__
from .errors import Source

ENVIRONMENT_VARIABLE = "SPADC_CACHE_DIR"
FORMAT = 2  # of the entries; part of the key (2: the base entry is the layout alone, each kernel an entry)


def directory() -> str:
    chosen = os.environ.get(ENVIRONMENT_VARIABLE)
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spadc")


@lru_cache(maxsize=1)
def compiler_digest() -> str:
    """SHA-256 over the compiler's own Python modules, in a fixed order."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith((".py", ".lark"))):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode("utf-8"))
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _machine() -> str:
    llvm.initialize_native_target()
    return f"{llvm.get_process_triple()} {llvm.get_host_cpu_name()} {llvm.get_host_cpu_features().flatten()}"


def key(source: Source, base_dir: str, dtype: str, max_memory: int, lanes: int | None = None, checkpoint="auto") -> str:
    """The key of a model's base kernels; `variant_key` derives a variant's from it."""
    parts = [FORMAT, __version__, compiler_digest(), llvmlite.__version__, ".".join(map(str, llvm.llvm_version_info)), _machine(),
             dtype, max_memory, lanes, checkpoint, source.name, os.path.abspath(base_dir), source.text]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def variant_key(base: str, variant: str) -> str:
    return hashlib.sha256(f"{base}/{variant}".encode("utf-8")).hexdigest()


def file_digests(paths) -> dict[str, str]:
    return {path: _digest_of_file(path) for path in paths}


def load(entry_key: str) -> tuple[dict, bytes] | None:
    """(layout, object code) of an entry, or None: absent, torn, or built from files since changed."""
    folder = usable_directory(create=False)
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, entry_key + ".json"), "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
        with open(os.path.join(folder, entry_key + ".o"), "rb") as f:
            code = f.read()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(code).hexdigest() != meta.get("object_sha256"):
        return None
    if any(_digest_of_file(path) != digest for path, digest in meta.get("files", {}).items()):
        return None
    return meta["layout"], code


def store(entry_key: str, layout: dict, code: bytes, files: dict[str, str]):
    """Write an entry; a cache that cannot be written is skipped (compiling still works)."""
    folder = usable_directory(create=True)
    if folder is None:
        return
    meta = {"layout": layout, "object_sha256": hashlib.sha256(code).hexdigest(), "files": files}
    try:  # the object first: an entry is complete once its .json is there
        _write(folder, entry_key + ".o", code)
        _write(folder, entry_key + ".json", json.dumps(meta).encode("utf-8"))
    except OSError:
        pass


def _digest_of_file(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _write(folder: str, name: str, data: bytes):
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)  # mode 0600
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
        os.replace(temporary, os.path.join(folder, name))
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


_warned: set[str] = set()


def usable_directory(create: bool) -> str | None:
    folder = directory()
    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
    except OSError:
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if folder not in _warned:
            _warned.add(folder)
            warnings.warn(f"the compile cache {folder} is not private to this user (owned by someone else, or "
                          f"writable by others): it is not used", SpadcWarning, stacklevel=4)
        return None
    return folder
