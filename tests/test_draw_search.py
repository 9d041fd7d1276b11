"""The search of a cdf behind SPAD's importance draws (spadc/backend/gates.py, `_first_above`),
compiled on its own, against what the interpreter does (spadc/ir/draws.py): NumPy's
searchsorted(side='right'), clamped to d - 1. Sizes that are and are not powers of two, cdfs with
ties (entries of probability zero), and every cdf value itself as a probe (where `>` and `>=`
part)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

from spadc.backend import gates, jit

SEED = 11
SIZES = (1, 2, 3, 7, 8, 9, 64, 100, 255, 256, 257, 1000)
RANDOM_PROBES = 300
ZERO_SHARE = 0.3  # entries of probability zero: runs of equal cdf values


class _Emitter:
    """What `_first_above` reads of a kernel's emitter: its builder and the site data pointer."""

    def __init__(self, builder, site_data):
        self.b, self.options = builder, {"site_data": site_data}


def _compiled_search(d: int):
    """(owner, search(data, u)): data holds q then the cdf, as a site's data does."""
    module = ir.Module(name="search")
    double = ir.DoubleType()
    function = ir.Function(module, ir.FunctionType(ir.IntType(64), [double.as_pointer(), double]), name="search")
    builder = ir.IRBuilder(function.append_basic_block())
    builder.ret(gates._first_above(_Emitter(builder, function.args[0]), {"d": d, "data": 0}, function.args[1]))
    compiled = jit.compile_ir(str(module), ("search",))
    kind = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.POINTER(ctypes.c_double), ctypes.c_double)
    return compiled, kind(compiled.addresses["search"])


@pytest.mark.parametrize("d", SIZES)
def test_the_compiled_search_is_searchsorted_right_clamped(d):
    rng = np.random.default_rng(SEED + d)
    q = rng.random(d) * (rng.random(d) >= ZERO_SHARE)
    q[rng.integers(d)] += 1.0  # never all zero
    q /= q.sum()
    cdf = np.cumsum(q)
    data = np.ascontiguousarray(np.concatenate([q, cdf]))
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
    _owner, search = _compiled_search(d)
    probes = np.concatenate([rng.random(RANDOM_PROBES), cdf, [0.0, np.nextafter(1.0, 0.0)]])
    expected = np.minimum(np.searchsorted(cdf, probes, side="right"), d - 1)
    found = np.array([search(pointer, float(u)) for u in probes])
    mismatches = np.flatnonzero(found != expected)
    assert mismatches.size == 0, (d, probes[mismatches[:5]], found[mismatches[:5]], expected[mismatches[:5]])
