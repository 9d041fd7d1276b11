"""What the emitted code may assume of the machine it runs on: the host's (the JIT's) unless an
ahead-of-time build for another target says otherwise (`for_target`).

Invariant: the choice is per thread (a build for another target in one thread never changes what
the JIT emits in another), and every emitter asks here rather than probing the host itself.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache

import llvmlite.binding as llvm

_chosen = threading.local()  # fused, wide, vectors, masked: None (the host's) or what a build chose


@contextmanager
def for_target(fused: bool, wide: bool, vectors: bool = False, masked: bool = False):
    """Emit for another target than the host: with FMA instructions or not, a 64 x 64 -> 128-bit
    multiply or not (a 64-bit machine), 64-byte vectors or not, masked vector loads and stores
    (AVX2's or AVX-512's) or not."""
    outer = getattr(_chosen, "value", None)
    _chosen.value = (fused, wide, vectors, masked)
    try:
        yield
    finally:
        _chosen.value = outer


@lru_cache(maxsize=1)
def _host() -> tuple[bool, bool, bool, bool]:
    llvm.initialize_native_target()
    triple = llvm.get_process_triple()
    features = llvm.get_host_cpu_features().flatten().split(",")
    return ("+fma" in features, triple.startswith(("x86_64", "aarch64", "arm64", "powerpc64", "riscv64", "s390x")),
            "+avx512f" in features, "+avx2" in features or "+avx512f" in features)


def _current() -> tuple[bool, bool, bool, bool]:
    return getattr(_chosen, "value", None) or _host()


def has_fma() -> bool:
    return _current()[0]


def has_wide_multiply() -> bool:
    return _current()[1]


def has_wide_vectors() -> bool:
    return _current()[2]


def has_masked_vectors() -> bool:
    """Whether LLVM may vectorise a loop of a few trips by masking its last vector (spadc/backend/
    codegen.py `straight_line` says why that matters)."""
    return _current()[3]
