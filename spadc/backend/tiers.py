"""Tiered compilation: a kernel first runs as quickly compiled machine code, and is compiled again
with LLVM's full pipeline once the work it has run makes that worth the cost.

Most kernels a session makes run a few times on a few samples (a check, a test, a notebook cell,
`spadc run`), where O3 is most of what they cost: 5 to 14 times the quick tier's compile time
(mlp_digits' gradient kernel: 251 ms against 48 ms). A kernel that trains soon runs long enough to
repay it. The design is .NET's tiered compilation, with a trigger that counts work, not calls.

Invariants:
- Both tiers compile the same LLVM IR, and no level changes a result (spadc/backend/jit.py): a
  promoted kernel gives the bits its quick code gave (tests/test_tiers.py; the fuzzer on every
  program it makes).
- The trigger is deterministic. Before each call of the quick code, the owner adds the call's
  samples times the kernel's per-sample work (its layout's `sample_work`) to what it has run; the
  kernel is optimised when the sum reaches WORK_PER_OBJECT_BYTE per byte of its quick object code,
  about where its quick runs have cost what compiling it again costs (a ski-rental rule: never
  more than twice the better choice in hindsight). A call is counted before it runs, so one
  call too large for the quick code runs optimised.
- One thread compiles; others calling meanwhile run the quick code, which stays alive with its
  owner (a caller may be inside it). Promotion happens once per kernel.
- `SPADC_JIT` (read when a kernel is made) sets the policy: `tiered` (default), `optimised` (O3 at
  once, as benchmarks want) or `quick` (never promoted).
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from spadrt.errors import SpadcError

from . import jit

ENVIRONMENT_VARIABLE = "SPADC_JIT"
POLICIES = ("tiered", "optimised", "quick")
# Measured on spadc's examples (gradient kernels, 2 cores of a shared x86-64 machine, 2026-12):
# quick code runs about 0.35 ns per unit of work, and O3 takes about 10 us per byte of the quick
# object code, so the two costs meet near 10e-6 / 0.35e-9 units of work per byte.
WORK_PER_OBJECT_BYTE = 25_000


def policy() -> str:
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "tiered")
    if chosen not in POLICIES:
        raise SpadcError(f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(POLICIES)}, got {chosen!r}")
    return chosen


def compile_kernel(llvm_ir: str, functions: tuple[str, ...], sample_work: int, on_optimised=None):
    """Machine code of one kernel (`functions`: its own, then any the runtime calls besides:
    spadrt.split_kernels) under the policy: a `jit.Compiled` (optimised, or quick under `quick`),
    or a `Tiered` owner of its quick code, which tells `on_optimised(compiled)` of the optimised
    code when it makes it (the disk cache keeps it)."""
    chosen = policy()
    if chosen == "optimised":
        return jit.compile_ir(llvm_ir, functions)
    quick = jit.compile_ir(llvm_ir, functions, jit.QUICK)
    if chosen == "quick":
        return quick
    return Tiered(quick, functions, sample_work, lambda: llvm_ir, on_optimised)


class Tiered:
    """The quick machine code of one kernel, and how to make its optimised code. The runtime calls
    `ran(samples)` before each call of the quick code (spadrt/calls.py `Promoting`): it returns the
    optimised function's address once that code exists, else None. `address(name)`: the newest
    code of any of the kernel's functions."""

    def __init__(self, quick: jit.Compiled, functions: tuple[str, ...], sample_work: int, emit: Callable[[], str],
                 on_optimised: Callable[[jit.Compiled], None] | None = None):
        self.quick, self.functions, self.optimised = quick, functions, None
        self.function = functions[0]
        self.addresses, self.object_code = quick.addresses, quick.object_code
        self.sample_work = max(int(sample_work), 1)
        self.budget = WORK_PER_OBJECT_BYTE * max(len(quick.object_code), 1)
        self.work = 0
        self._emit, self._on_optimised = emit, on_optimised
        self._lock = threading.Lock()

    def ran(self, samples: int) -> int | None:
        if self.optimised is not None:
            return self.optimised.addresses[self.function]
        self.work += int(samples) * self.sample_work
        if self.work < self.budget or not self._lock.acquire(blocking=False):
            return None  # (not yet; or another thread is compiling it: run the quick code meanwhile)
        try:
            if self.optimised is None:
                optimised = jit.compile_ir(self._emit(), self.functions)
                if self._on_optimised is not None:
                    self._on_optimised(optimised)
                self.optimised, self._emit = optimised, None
            return self.optimised.addresses[self.function]
        finally:
            self._lock.release()

    def address(self, function: str) -> int:
        return (self.optimised or self.quick).addresses[function]
