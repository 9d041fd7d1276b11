"""What a call is given: inputs checked against the layout and made into kernel arguments, and
options validated.

Invariants:
- Nothing a caller passes reaches a kernel unchecked: names, shapes, dtypes and batch sizes of
  inputs are checked first, each mistake a `SpadcError` naming the input; options are never
  silently coerced (`seed=1.5` is an error, not seed 1).
- An input with one more leading dimension than declared is a batch; the others are shared by
  every sample (stride 0).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .calls import address
from .errors import SpadcError


def user_inputs(layout: dict) -> list[dict]:
    """The inputs a caller gives: all the kernel's inputs but the states (which `state=` gives)."""
    return [spec for spec in layout["inputs"] if not spec.get("state")]


def prepare(layout: dict, values: dict, dtype_of) -> "Prepared":
    """The inputs as kernel arguments; `dtype_of(dtype)` is the NumPy type of a declared dtype."""
    specs = layout["inputs"]
    if len(values) > len(specs) or not all(spec["name"] in values for spec in specs):
        declared = [spec["name"] for spec in specs]
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise SpadcError(f"unknown input `{unknown[0]}`; the model's inputs are {', '.join(declared) or 'none'}")
        spec = next(spec for spec in specs if spec["name"] not in values)
        raise SpadcError(f"missing input `{spec['name']}` ({type_text(spec)})")
    arrays, batch = [], None
    for spec in specs:
        name = spec["name"]
        value, wanted = values[name], dtype_of(spec["dtype"])
        # An array already of the kernel's type and layout needs no conversion (the common case first:
        # a small model's whole call takes microseconds).
        array = (value if type(value) is np.ndarray and value.dtype == wanted and value.flags.c_contiguous
                 else convert(value, spec, wanted))
        shape, declared_shape = array.shape, tuple(spec["shape"])
        if shape == declared_shape:
            batched = False
        elif len(shape) == len(declared_shape) + 1 and shape[1:] == declared_shape:
            batched = True
            if batch is not None and batch[1] != array.shape[0]:
                raise SpadcError(f"input `{name}` has a batch of {array.shape[0]} samples but `{batch[0]}` "
                                 f"has {batch[1]}")
            batch = (name, array.shape[0])
        else:
            raise SpadcError(f"input `{name}` must have shape {spec['shape']} (or [batch, ...] of it), "
                             f"got {list(array.shape)}")
        arrays.append((array, batched))
    n = batch[1] if batch else 1
    if n == 0:
        raise SpadcError(f"input `{batch[0]}` is an empty batch")
    strides = (ctypes.c_int64 * max(len(arrays), 1))(*[a.strides[0] if b else 0 for a, b in arrays])
    pointers = (ctypes.c_void_p * max(len(arrays), 1))(*[address(a) for a, _ in arrays])
    return Prepared(n, batch is not None, pointers, strides, arrays)


@dataclass
class Prepared:
    n: int
    batched: bool
    pointers: object
    strides: object
    keepalive: list  # (array, batched) of each argument: the arrays the pointers point into

    def joined(self, other: "Prepared") -> "Prepared":
        """These arguments with `other`'s after them (a derived kernel's own inputs after the
        model's); the batch is this one's, or `other`'s when only it has one (the caller checks that
        two batches agree)."""
        mine, theirs = len(self.keepalive), len(other.keepalive)
        if other.pointers is None:  # bare arrays (`Prepared(n, batched, None, None, arrays)`)
            other = Prepared(other.n, other.batched, [address(a) for a, _ in other.keepalive],
                             [a.strides[0] if b else 0 for a, b in other.keepalive], other.keepalive)
        count = max(mine + theirs, 1)
        n, batched = (self.n, True) if self.batched else (other.n, other.batched)
        return Prepared(n, batched,
                        (ctypes.c_void_p * count)(*self.pointers[:mine], *other.pointers[:theirs]),
                        (ctypes.c_int64 * count)(*self.strides[:mine], *other.strides[:theirs]),
                        list(self.keepalive) + list(other.keepalive))

    def chunk(self, start: int) -> tuple:
        """(input pointers, strides) for the samples from `start` on."""
        if start == 0:
            return self.pointers, self.strides
        moved = (ctypes.c_void_p * len(self.pointers))(*[p + start * s for p, s in zip(self.pointers, self.strides)])
        return moved, self.strides


def type_text(spec) -> str:
    return spec["dtype"] + (f"[{', '.join(map(str, spec['shape']))}]" if spec["shape"] else "")


def numeric(value, what: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise SpadcError(f"{what} is not an array of numbers: {error}") from None
    if array.dtype.kind not in "biuf":
        raise SpadcError(f"{what} must be numeric, got {array.dtype}")
    return array


def is_real(value) -> bool:
    """A real number as an option: an int or float (NumPy's too), never a bool or a string."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def float_array(value, what: str) -> np.ndarray:
    """Numbers for a float buffer (params, directions): bools are a mistake, not 0 and 1."""
    array = numeric(value, what)
    if array.dtype.kind == "b":
        raise SpadcError(f"{what} must be numbers, got bool")
    return array


I64_MAX = np.iinfo(np.int64).max


def convert(value, spec, numpy_dtype) -> np.ndarray:
    array = numeric(value, f"input `{spec['name']}`")
    kind = array.dtype.kind
    if spec["dtype"] == "i64" and kind not in "iu":
        raise SpadcError(f"input `{spec['name']}` must be integers (i64), got {array.dtype}")
    if spec["dtype"] == "bool" and kind != "b":
        raise SpadcError(f"input `{spec['name']}` must be bool, got {array.dtype}")
    if spec["dtype"] == "f64" and kind == "b":
        raise SpadcError(f"input `{spec['name']}` must be numbers (f64), got bool")
    if spec["dtype"] == "i64" and kind == "u" and array.size and array.max() > I64_MAX:
        raise SpadcError(f"input `{spec['name']}` holds {array.max()}, more than i64 holds (at most {I64_MAX})")
    # no copy when the array is already what the kernel reads (ascontiguousarray would make 0-d arrays 1-d)
    return np.asarray(array, dtype=numpy_dtype, order="C")


NO_DATA = np.zeros(1)  # stands for an unused buffer argument
NO_DATA_ADDRESS = address(NO_DATA)


def check_seed(value, name: str, bound: int = 1 << 64) -> int:
    """A seed-like option: an integer in [0, bound), never a silently truncated float or bool."""
    if type(value) is int and 0 <= value < bound:  # the common case, first: a call costs microseconds
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SpadcError(f"{name} must be an integer in [0, 2^{bound.bit_length() - 1}), got {value!r}")
    if not 0 <= int(value) < bound:
        raise SpadcError(f"{name} must be in [0, 2^{bound.bit_length() - 1}), got {value}")
    return int(value)


class Options(NamedTuple):
    """A call's options, validated: what keys the random stream, and whether dropout is on."""
    training: int
    seed: int
    step: int
    offset: int

    @staticmethod
    def check(training, seed, step, offset) -> "Options":
        if not isinstance(training, (bool, np.bool_)):
            raise SpadcError(f"training must be True or False, got {training!r}")
        return Options(int(training), check_seed(seed, "seed"), check_seed(step, "step"),
                        check_seed(offset, "sample_offset", 1 << 63))


def merge_inputs(inputs: dict | None, keyword_inputs: dict) -> dict:
    if inputs is None:
        return keyword_inputs
    if not isinstance(inputs, dict):
        raise SpadcError(f"inputs= must be a dict of input name to array, got {type(inputs).__name__}")
    both = set(inputs) & set(keyword_inputs)
    if both:
        raise SpadcError(f"input `{sorted(both)[0]}` is given twice, in inputs= and as a keyword")
    return {**inputs, **keyword_inputs}


def with_state(layout: dict, values: dict, state: dict | None) -> dict:
    """The inputs with each `state` filled in: its value from `state`, else its initial value."""
    if state is None and not layout.get("state"):
        return values
    declared = {s["name"]: s for s in layout.get("state", [])}
    if state is not None and not isinstance(state, dict):
        raise SpadcError(f"state= must be a dict of state name to array, got {type(state).__name__}")
    given = state or {}
    unknown = set(given) - set(declared)
    if unknown:
        raise SpadcError(f"unknown state `{sorted(unknown)[0]}`; the model's states are {', '.join(declared) or 'none'}")
    clash = set(values) & set(declared)
    if clash:
        name = sorted(clash)[0]
        raise SpadcError(f"`{name}` is a state, not an input: pass it as state={{\"{name}\": ...}}")
    filled = dict(values)
    for name, spec in declared.items():
        filled[name] = given[name] if name in given else np.broadcast_to(np.asarray(spec["init"]), spec["shape"])
    return filled

