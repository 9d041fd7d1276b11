"""Files spadc writes and the .npz files it reads, safely; NumPy only.

Invariants:
- A file is written whole or not at all: into a temporary file beside it, flushed to disk, then
  renamed over the target (atomic on POSIX), so a crash or Ctrl-C at any moment leaves the previous
  file intact. The path is used exactly as given (no suffix is added).
- `check_writable` fails before any work starts when an output could not be written.
- `.npz` files are read member by member: names and the sizes in their headers are checked
  before anything is decompressed, and no member is read past the size its header declares, so a
  damaged or hostile file is a `SpadcError`, never a traceback or a huge allocation.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
import zipfile

import numpy as np

from . import interrupts
from .errors import SpadcError
from .limits import format_bytes, limit_text, max_memory


def path_argument(value, what: str) -> str:
    """`value` as a path string: a str or any os.PathLike of one; anything else is a SpadcError."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise SpadcError(f"{what} must be a path (a str or os.PathLike), got {type(value).__name__}")


def check_writable(path: str, what: str = "output"):
    """Raise now if `path` cannot be written: a missing directory, a directory in its place, no permission."""
    path = path_argument(path, f"the {what} path")
    if not path:
        raise SpadcError(f"the {what} path is empty")
    if os.path.isdir(path):
        raise SpadcError(f"cannot write the {what} to {path}: it is a directory (give a file name)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise SpadcError(f"cannot write the {what} to {path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise SpadcError(f"cannot write the {what} to {path}: permission denied")


@contextlib.contextmanager
def atomic_write(path: str, what: str = "output"):
    """A binary file object; on success its bytes replace `path` in one rename. Ctrl-C is held to
    the end (spadrt/interrupts.py): landing between the temporary file's creation and the `try`
    that removes it, it left the file behind (a checkpoint written as training was interrupted)."""
    path = path_argument(path, f"the {what} path")
    check_writable(path, what)
    directory = os.path.dirname(os.path.abspath(path))
    with interrupts.deferred():
        descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(descriptor, "wb") as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            if os.path.exists(path):
                os.chmod(temporary, os.stat(path).st_mode & 0o7777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, path)
        except OSError as error:
            raise SpadcError(f"cannot write the {what} to {path}: {error.strerror or error}") from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def save_npz(path: str, arrays: dict, what: str = "arrays"):
    """`numpy.savez` to exactly `path`, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_write(path, what) as file:
        file.write(buffer.getvalue())


def read_npz(path: str, what: str, names=None, limit: int | None = None, unknown: str = "error") -> dict[str, np.ndarray]:
    """The arrays of an .npz file. `names`: the allowed member names; another is an error naming it
    before anything is decompressed, or with `unknown="warn"` a warning naming it, and it is never
    read. `limit`: the bytes all arrays may take together (default: the memory limit)."""
    path = path_argument(path, f"the {what} path")
    limit = max_memory() if limit is None else limit
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise SpadcError(f"{path}: cannot read {what}: no such file") from None
    except IsADirectoryError:
        raise SpadcError(f"{path}: cannot read {what}: it is a directory") from None
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise SpadcError(f"{path}: cannot read {what}: not an .npz file ({error})") from None
    arrays, total = {}, 0
    with archive:
        members = []
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            if not member.filename.endswith(".npy"):
                raise SpadcError(f"{path}: cannot read {what}: member {member.filename!r} is not a NumPy array")
            if names is not None and name not in names:
                expected = ", ".join(f"`{n}`" for n in names) or "none"
                if unknown != "warn":
                    raise SpadcError(f"{path}: unknown array `{name}` in the {what}; expected {expected}")
                warnings.warn(f"{path}: array `{name}` is not an input of the model (its inputs: {expected}); "
                              f"it is ignored", stacklevel=2)
                continue
            members.append(member)
        for member in members:
            name = member.filename.removesuffix(".npy")
            total += member.file_size
            if total > limit:
                raise SpadcError(f"{path}: the {what} would take {format_bytes(total)} or more: "
                                 f"more than {limit_text(limit)}")
            arrays[name] = _read_member(archive, member, path, what)
    return arrays


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: str, what: str) -> np.ndarray:
    name = member.filename.removesuffix(".npy")
    try:
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
            if dtype.hasobject or dtype.kind not in "biuf":
                raise SpadcError(f"{path}: array `{name}` of the {what} has dtype {dtype}: numbers are needed")
            count = int(np.prod(shape, dtype=object))
            size = count * dtype.itemsize
            if size > member.file_size:
                raise SpadcError(f"{path}: array `{name}` of the {what} is damaged (its header promises "
                                 f"{size:,} bytes, the archive holds {member.file_size:,})")
            data = stream.read(size)
            if len(data) != size:
                raise SpadcError(f"{path}: array `{name}` of the {what} is truncated")
    except SpadcError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError) as error:
        raise SpadcError(f"{path}: array `{name}` of the {what} is damaged: {error}") from None
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()
