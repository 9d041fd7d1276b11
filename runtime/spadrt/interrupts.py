"""Ctrl-C held back while a step runs that must not be cut in half, then raised at its end.

Two such steps: compiling or loading a kernel (MCJIT calls back into Python while emitting, where a
KeyboardInterrupt would be swallowed by ctypes and the program would run on, and llvmlite's
wrappers leave half-made objects when cut; spadc/backend/jit.py), and starting a thread of
the runtime's pool (spadrt/calls.py): an interrupt inside `Thread.start` leaves a worker thread
running that the pool never registered, so nothing tells it to stop and Python's exit waits for
it forever.

Invariant: only the main thread receives Python's signals; elsewhere, or when a program has put
its own SIGINT handler in place, `deferred()` does nothing.
"""

import signal
import threading
from contextlib import contextmanager


@contextmanager
def deferred():
    """SIGINT inside the block is remembered, not raised, and raised as KeyboardInterrupt at its end."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not \
            signal.default_int_handler:
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
