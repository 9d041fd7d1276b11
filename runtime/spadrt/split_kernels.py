"""Split gradient kernels: what depends on params alone runs once per batch, not once per call.

A gradient kernel whose entry has `hoisted` (spadc/backend/kernels.py `grad_kernel`) is three
functions besides itself: `_hoist` computes the values that depend on params alone (a mixture's
per-component matrices) into a block, `_chunk` runs a call's samples reading them and writes,
after the mean gradient, the mean of the block's adjoints, and `_finish` maps such adjoints to
their share of the gradient. A batch of one call calls the kernel itself, which does all three.
A batch of several hoists once, runs each chunk on `_chunk` into a gradient buffer that the
adjoints' block extends, adds those up as any chunk gradients (spadrt/reduction.py), and
finishes once on the sum: `finish_sum`.

Invariants:
- Finishing is linear, so finishing the weighted sum of the chunks' adjoints once gives the
  gradient that finishing each chunk would give, to rounding.
- Whether a batch is split depends on its size and the kernel's chunk alone, and the finished
  image is added to the sum entry by entry after the tree: a worker that finishes only its run of
  the params (spadrt/remote.py) gets the bits of that run of the whole. So results do not depend
  on threads, processes or machines.
- The functions are resolved from their owner at each batch (the JIT's optimised code, once made,
  replaces its quick code), and the batch's samples count towards that promotion once.
"""

from __future__ import annotations

import ctypes

import numpy as np

_POINTER, _I64 = ctypes.c_void_p, ctypes.c_int64
HOIST_TYPE = ctypes.CFUNCTYPE(_I64, _POINTER, _POINTER, _POINTER, _POINTER)  # params, workspace, status, hoisted
FINISH_TYPE = ctypes.CFUNCTYPE(_I64, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER)  # ..., grads, adjoints


def functions(entry: dict, own: str | None = None) -> tuple[str, ...]:
    """A gradient kernel's functions: its own (`own`, default its entry's symbol), then the parts
    of a split kernel."""
    hoisted = entry.get("hoisted")
    parts = (hoisted["hoist"], hoisted["chunk"], hoisted["finish"]) if hoisted else ()
    return (own or entry["symbol"], *parts)


def _address(owner, name: str) -> int:
    """A function's address from what owns the machine code: JIT code (which knows its newest
    code) or a loaded library."""
    if hasattr(owner, "address"):
        return owner.address(name)
    return ctypes.cast(getattr(owner, name), ctypes.c_void_p).value


class SplitKernels:
    """The parts of one split gradient kernel, as the runtime calls them."""

    def __init__(self, entry: dict, owner, chunk_type, float_type):
        self.entry, self._owner, self._chunk_type = entry, owner, chunk_type
        self.grad_size = entry["grad_size"]
        self.adjoint_size = entry["hoisted"]["bytes"] // np.dtype(float_type).itemsize
        self._made: dict[tuple[str, int], object] = {}

    def _function(self, name: str, kernel_type):
        address = _address(self._owner, name)
        function = self._made.get((name, address))
        if function is None:
            function = self._made.setdefault((name, address), kernel_type(address))
        return function

    def parts(self, samples: int) -> tuple:
        """(hoist, chunk) for a batch of `samples`, which count towards promoting JIT code."""
        if hasattr(self._owner, "ran"):
            self._owner.ran(samples)
        hoisted = self.entry["hoisted"]
        return self._function(hoisted["hoist"], HOIST_TYPE), self._function(hoisted["chunk"], self._chunk_type)

    def finish_sum(self, call, total: np.ndarray, run: slice | None = None) -> np.ndarray:
        """The gradient from `total`, a sum of chunks' buffers (gradient, then adjoints; with `run`:
        that run of the gradient, then the adjoints): its gradient part, to which the image of
        its adjoints is added. `call(finish, image_address, adjoints_address)` runs `_finish`."""
        if not total.flags.writeable:  # (a sum received from a peer)
            total = total.copy()
        image = np.zeros(self.grad_size, dtype=total.dtype)
        adjoints = np.ascontiguousarray(total[total.size - self.adjoint_size:])
        call(self._function(self.entry["hoisted"]["finish"], FINISH_TYPE), image.ctypes.data, adjoints.ctypes.data)
        gradient = total[:total.size - self.adjoint_size]
        gradient += image if run is None else image[run]
        return gradient
