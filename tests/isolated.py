"""Oracles that run in a child process which exits afterwards.

JAX and PyTorch take 150-250 MB once imported, which a worker of the suite would otherwise hold to
its end (the suite's budget is 800 MB in all, issue 29). A test module computes everything it
needs from such a library in one call (`in_child`), so each pays one import. The function must
be importable by name (a module-level function of a test module or helper), and its arguments
and result picklable.
"""

import concurrent.futures
import importlib.util
import multiprocessing

import pytest


def require(module: str, reason: str):
    """Skip, saying why, when an optional library is absent (without importing it here)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: {reason}")


def in_child(function, *args):
    """function(*args) in a fresh process (spawned: JAX's threads and fork do not mix)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
