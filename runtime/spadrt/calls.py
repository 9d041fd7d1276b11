"""How kernels are called: scratch per call, batches in fixed chunks over threads.

Invariants:
- A call never shares what a kernel writes besides its results (the workspace, the status words,
  a `params=` override) with another call: each takes a `Scratch` from its model's pool and gives
  it back, so any number of Python threads may call one model at once.
- A batch is cut into chunks of `CHUNK` samples (a gradient kernel may ask for more: its layout's
  `chunk`, a constant of the kernel) whatever the thread count; each chunk is one kernel call keyed
  by its samples' indices in the whole batch (`sample_offset`), into buffers of its own; chunk
  results are combined in chunk order. So the result does not depend on the thread count, bit for
  bit, and each sample's contribution is that of a single call on the whole batch.
- ctypes releases the GIL during a kernel call, so chunks run on several cores at once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import interrupts
from .errors import SpadcError

CHUNK = 128  # samples per kernel call when a batch is split (a constant: results never depend on threads)


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_threads(threads) -> int | None:
    """`threads` checked: a positive count, or None for every core this process may use (counted
    only where a batch is split, by `cores`: the count is a system call, and most calls of a small
    model have one chunk)."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise SpadcError(f"threads must be a positive integer (or None for all cores), got {threads!r}")
    return int(threads)


def cores(threads: int | None) -> int:
    """The count of cores a checked `threads` means."""
    return all_cores() if threads is None else threads


def address(array: np.ndarray) -> int:
    """The address of an array's first byte (half the time of `array.ctypes.data`, which costs a
    microsecond: a small model's whole call is a few)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only, or empty
        return array.ctypes.data


class Scratch:
    """What one kernel call writes besides its results: a 64-byte aligned workspace, the status
    words, and the one-word results (a mean loss, a count of stored bytes), addresses cached."""

    def __init__(self):
        self.status = np.zeros(3, dtype=np.int64)
        self.words = np.zeros(2, dtype=np.int64)  # [mean loss (its bytes), stored bytes]
        self.status_address, self.loss_address = address(self.status), address(self.words)
        self.stored_address = self.loss_address + 8
        self._loss_views = {np.dtype(t): self.words.view(t) for t in (np.float64, np.float32)}
        self.override = None  # a `params=` buffer, alive for the call
        self._buffer = np.zeros(0, dtype=np.uint8)
        self._size = -1
        self._address = 0

    def loss(self, float_type) -> float:
        """The mean loss the last call wrote, a `float_type` in the first word."""
        return float(self._loss_views[np.dtype(float_type)][0])

    def workspace(self, size: int) -> int:
        if self._size < size:
            self._buffer = np.zeros(size + 64, dtype=np.uint8)
            self._size = size
            self._address = self._buffer.ctypes.data + (-self._buffer.ctypes.data) % 64
        return self._address


SAMPLES_ARGUMENT = 3  # every kernel's arguments begin (params, inputs, strides, samples, ...): model.py


class Promoting:
    """A kernel's quick machine code, whose owner may compile it optimised (spadc/backend/tiers.py):
    each call first tells the owner how many samples it runs, and once the owner gives the optimised
    function's address, that function runs this call and every later one, and `install` puts it in
    the caller's table so that later calls skip this wrapper."""

    def __init__(self, function, owner, kernel_type, install):
        self._function, self._owner, self._kernel_type, self._install = function, owner, kernel_type, install
        self._promoted = False

    def __call__(self, *arguments):
        if not self._promoted:
            address = self._owner.ran(arguments[SAMPLES_ARGUMENT])
            if address is not None:
                self._function, self._promoted = self._kernel_type(address), True
                self._install(self._function)
        return self._function(*arguments)


class ScratchPool:
    """Free scratch sets; a call takes one (or a new one) and gives it back."""

    def __init__(self):
        self._free: list[Scratch] = []
        self._lock = threading.Lock()

    def take(self) -> Scratch:
        with self._lock:
            return self._free.pop() if self._free else Scratch()

    def give(self, scratch: Scratch):
        scratch.override = None
        with self._lock:
            self._free.append(scratch)


class BufferPool:
    """Free float buffers by size and type (the gradients of a call's chunks, until they are
    combined): reused, so that a call does not page in fresh megabytes every time."""

    def __init__(self):
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, size: int, dtype) -> np.ndarray:
        with self._lock:
            free = self._free.get((size, np.dtype(dtype)))
            return free.pop() if free else np.empty(size, dtype=dtype)

    def give(self, buffer: np.ndarray):
        with self._lock:
            self._free.setdefault((buffer.size, buffer.dtype), []).append(buffer)


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max(all_cores(), 1), thread_name_prefix="spadc")
        return _executor


def chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def run_chunks(task, n: int, threads: int | None, size: int = CHUNK) -> list:
    """[task(start, stop) for each chunk of `size` samples], on up to `threads` threads, in chunk
    order. The first chunk (in order) that raised re-raises its error."""
    if n <= size:
        return [task(0, n)]
    spans = chunks(n, size)
    threads = cores(threads)
    if threads == 1:
        return [task(start, stop) for start, stop in spans]
    workers = min(threads, len(spans))
    groups = [spans[k::workers] for k in range(workers)]  # each worker takes every workers-th chunk
    with interrupts.deferred():  # the pool starts its threads here (spadrt/interrupts.py says why)
        futures = [_pool().submit(lambda group=group: [_attempt(task, *span) for span in group]) for group in groups]
    done = [future.result() for future in futures]
    results = [done[k % workers][k // workers] for k in range(len(spans))]
    for outcome in results:
        if isinstance(outcome, _Failure):
            raise outcome.error
    return results


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _attempt(task, start: int, stop: int):
    try:
        return task(start, stop)
    except SpadcError as error:  # raised in chunk order by run_chunks
        return _Failure(error)
