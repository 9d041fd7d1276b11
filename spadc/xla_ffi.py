"""Host functions as XLA FFI targets: what `spadc.jax` calls its kernels through (optional extra
`spadc[jax]`, never imported by the core).

`host_call(function, result_shapes, *args)` is `jax.pure_callback(function, result_shapes, *args,
vmap_method="sequential")` at about a tenth of its cost per call: the function runs in an XLA FFI
handler (the typed FFI's C ABI, xla/ffi/api/c_api.h, read through ctypes) on views of XLA's own
buffers, where a pure callback goes through JAX's Python callback machinery (a call doing nothing
adds 24 µs to a jitted function here, 280 µs by pure_callback: `python -m bench.wrappers`).

Invariants:
- One FFI target per function and call signature (the arguments' tree, shapes and dtypes), made
  when a call is first traced and kept for the life of the process: XLA cannot unregister one, so
  its handler, and what the function holds, must outlive every compiled computation that calls it.
- The function reads views of the argument buffers (valid during the call only) and its results
  are copied into XLA's result buffers, checked against the declared shapes.
- An exception in the function fails the call: XLA raises it in JAX with the exception's message.
"""

from __future__ import annotations

import ctypes
import itertools
import threading

import jax
import numpy as np

_VERSION = (0, 1)  # the FFI API version the structures below are laid out for (XLA_FFI_API_MAJOR, _MINOR)
_METADATA_EXTENSION = 1  # XLA_FFI_Extension_Metadata: XLA asks the handler for its API version
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL
_ERROR_CREATE_OFFSET = 48  # of XLA_FFI_Error_Create in XLA_FFI_Api: after two words, the version and a pointer


class _Extension(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.c_void_p), ("major", ctypes.c_int),
                ("minor", ctypes.c_int)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("api_version", _Version), ("traits", ctypes.c_uint32),
                ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("base", _Extension), ("metadata", ctypes.POINTER(_Metadata))]


class _Values(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets share this layout
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("values", ctypes.POINTER(ctypes.c_void_p))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.c_void_p), ("dtype", ctypes.c_int),
                ("data", ctypes.c_void_p), ("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


class _Attributes(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.c_void_p), ("size", ctypes.c_int64),
                ("types", ctypes.c_void_p), ("names", ctypes.c_void_p), ("values", ctypes.c_void_p)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.POINTER(_Extension)),
                ("api", ctypes.c_void_p), ("context", ctypes.c_void_p), ("stage", ctypes.c_int),
                ("args", _Values), ("rets", _Values), ("attrs", _Attributes), ("future", ctypes.c_void_p)]


class _ErrorArgs(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("extension", ctypes.c_void_p), ("message", ctypes.c_char_p),
                ("code", ctypes.c_int)]


_HANDLER = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))
_ERROR_CREATE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorArgs))
_capsule = ctypes.pythonapi.PyCapsule_New
_capsule.restype, _capsule.argtypes = ctypes.py_object, (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)

_TARGETS: dict[tuple, str] = {}  # signature -> target name; the handlers live in _HANDLERS for good
_HANDLERS: list = []
_LOCK = threading.Lock()
_NAMES = itertools.count()


def host_call(function, result_shapes, *args):
    """`function(*args)` on the host, as a JAX operation whose results have `result_shapes` (a
    pytree of jax.ShapeDtypeStruct); mapped one element at a time under `jax.vmap`."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    results, result_tree = jax.tree_util.tree_flatten(result_shapes)
    shapes = tuple((tuple(np.shape(x)), np.dtype(x.dtype)) for x in leaves)
    result_avals = tuple((tuple(r.shape), np.dtype(r.dtype)) for r in results)
    name = _target((function, tree, shapes, result_tree, result_avals))
    values = jax.ffi.ffi_call(name, results, vmap_method="sequential")(*leaves)
    return jax.tree_util.tree_unflatten(result_tree, values)


def _target(signature: tuple) -> str:
    with _LOCK:
        if signature not in _TARGETS:
            function, tree, shapes, result_tree, result_avals = signature
            name = f"spadc_host_{next(_NAMES)}"
            handler = _HANDLER(_handler(function, tree, shapes, result_avals))
            jax.ffi.register_ffi_target(name, _capsule(ctypes.cast(handler, ctypes.c_void_p).value,
                                                       b"xla._CUSTOM_CALL_TARGET", None), platform="cpu")
            _HANDLERS.append(handler)
            _TARGETS[signature] = name
        return _TARGETS[signature]


def _handler(function, tree, shapes, result_avals):
    # What each call needs but the buffers' addresses is made once here: a call of a small model
    # takes tens of microseconds, and this is on its path.
    arguments = [_Viewer(shape, dtype) for shape, dtype in shapes]
    results = [_Viewer(shape, dtype) for shape, dtype in result_avals]
    unflatten, leaves = tree.unflatten, jax.tree_util.tree_leaves

    def handle(frame_pointer):
        frame = frame_pointer.contents
        if frame.extension and frame.extension.contents.type == _METADATA_EXTENSION:
            metadata = ctypes.cast(frame.extension, ctypes.POINTER(_MetadataExtension)).contents.metadata.contents
            metadata.api_version.major, metadata.api_version.minor = _VERSION
            metadata.traits = 0
            return None
        try:
            given, wanted = frame.args.values, frame.rets.values
            found = leaves(function(*unflatten([view(given[k]) for k, view in enumerate(arguments)])))
            if len(found) != len(results):
                raise ValueError(f"the host function gave {len(found)} results, not {len(results)}")
            for k, (value, view) in enumerate(zip(found, results)):
                value = np.asarray(value)
                if value.shape != view.shape:
                    raise ValueError(f"the host function's result {k} has shape {value.shape}, not {view.shape}")
                np.copyto(view(wanted[k]), value, casting="same_kind")
            return None
        except BaseException as error:  # noqa: B036 (every failure must reach XLA, never unwind through C)
            return _error(frame.api, f"{type(error).__name__}: {error}")
    return handle


class _Viewer:
    """An XLA buffer of one shape and dtype as a NumPy array, without a copy."""

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype = shape, dtype
        self.count = int(np.prod(shape, dtype=np.int64))
        self.raw = ctypes.c_char * (self.count * dtype.itemsize)

    def __call__(self, buffer_pointer: int) -> np.ndarray:
        if self.count == 0:
            return np.empty(self.shape, self.dtype)
        data = ctypes.c_void_p.from_address(buffer_pointer + _Buffer.data.offset).value
        return np.ndarray(self.shape, self.dtype, self.raw.from_address(data))  # (half frombuffer's time)


def _error(api: int, message: str) -> int:
    create = _ERROR_CREATE(ctypes.c_void_p.from_address(api + _ERROR_CREATE_OFFSET).value)
    args = _ErrorArgs(ctypes.sizeof(_ErrorArgs), None, message.encode("utf-8", "replace"), _INTERNAL)
    return create(ctypes.byref(args))
