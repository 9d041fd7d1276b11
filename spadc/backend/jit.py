"""JIT compilation with llvmlite: optimise with the new pass manager, then MCJIT to machine code.

Invariants:
- Optimisation uses LLVM's default pipeline at the given level (O2 or O3), with loop and SLP
  vectorisation on and loop unrolling off, tuned for the host CPU; at level QUICK (the first tier,
  spadc/backend/tiers.py) three cleanup passes and LLVM's fast instruction selector, about 5 times
  less compile time for code 1 to 4.6 times slower. No level changes a result: the IR carries no
  fast-math flag and its fused multiply-adds are explicit, so every level computes the same IEEE
  operations in the same order.
- A `Compiled` keeps its execution engine alive as long as anyone holds the function addresses.
- A Ctrl-C while MCJIT emits code is held until the engine is done, then raised: MCJIT calls back
  into Python (the object cache), where a KeyboardInterrupt would be swallowed by ctypes ("Exception
  ignored on calling ctypes callback") and the program would run on as if nothing had happened.
- `compile_ir` of a module it compiled recently (same text, functions and level) loads the object
  code it kept (32 MB at most, this process only) instead of optimising again: the same bits.
- After a compile or a load of object code, LLVM's own code pages are given back to the system
  (spadc/backend/resident.py): a kernel that runs for minutes does not carry the compiler's
  resident memory.
- Each engine gets a target machine and an LLVM context of its own (it owns and frees both with
  itself), so freeing compiled models in any order is safe and a long process that compiles many
  models does not grow: the process-wide context would keep every type and constant forever.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from functools import lru_cache

import llvmlite.binding as llvm
from llvmlite.binding import ffi
from spadrt.interrupts import deferred as interrupts_deferred

from .resident import release_compiler_pages


@lru_cache(maxsize=1)
def _host() -> tuple:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm.Target.from_default_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


QUICK = 0  # the level of the quick tier


def native_target(level: int = 3):
    """A new target machine for the host, generating code at `level` (QUICK: the fast instruction
    selector and register allocator). Never shared: an MCJIT engine owns the target machine it is
    given and disposes of it with itself, so two engines sharing one crash when both are freed."""
    target, cpu, features = _host()
    return target.create_target_machine(opt=3 if level != QUICK else 0, cpu=cpu, features=features, jit=True)


def optimise(llvm_ir: str, target_machine, level: int = 3, context=None) -> "llvm.ModuleRef":
    """`context`: an LLVM context of the module's own (default: the process-wide one, which keeps
    every type and constant it has ever seen)."""
    module = llvm.parse_assembly(llvm_ir, context)
    module.triple = target_machine.triple
    module.data_layout = str(target_machine.target_data)
    module.verify()
    if level == QUICK:
        _quick_passes(module, target_machine)
    else:
        with pipeline(target_machine, level) as (builder, manager):
            manager.run(module, builder)
    return module


def _quick_passes(module, target_machine) -> None:
    """Values out of memory into registers, then instruction combining and CFG simplification:
    what makes the emitter's code fit for a fast instruction selector (without them a kernel ran
    up to 10 times slower than at O3; with them 1 to 4.6 times, for a fifth of the compile time)."""
    options = llvm.PipelineTuningOptions(speed_level=0)
    builder = llvm.create_pass_builder(target_machine, options)
    manager = llvm.create_new_module_pass_manager()
    try:
        manager.add_sroa_pass()
        manager.add_instruction_combine_pass()
        manager.add_simplify_cfg_pass()
        manager.run(module, builder)
    finally:
        _dispose_pass_manager(manager)
        builder.close()
        options.close()


_vectoriser_lock = threading.Lock()
_vectoriser_set = False


def _vectoriser_options() -> None:
    """LLVM's loop vectoriser treats a loop of fewer than 16 known trips as tiny and vectorises it
    only by masking its last vector, and a store so masked is not forwarded to a later load of the
    same entries (on a Zen 4 core each such pair stalls). Loops of 8 trips or more now run whole
    vectors and the rest in scalar code: the Gaussian mixture of bench/gmm.py's gradient of one
    sample, mostly its once-per-call part (the 10 x 10 `tril` adjoints), took 0.92x the time (four
    processes each way); the table's gradients moved within noise (0.96-1.02x, A/B in one process).
    The option is LLVM's, global to the process (code another llvmlite user such as numba makes in
    the same process is vectorised so too: the same results, other loops' shapes); it is set once,
    under a lock, as LLVM parses options into shared tables."""
    global _vectoriser_set
    with _vectoriser_lock:
        if not _vectoriser_set:
            llvm.set_option("spadc", "-vectorizer-min-trip-count=8")
            _vectoriser_set = True


@contextmanager
def pipeline(target_machine, level: int = 3):
    """(pass builder, module pass manager) of the JIT's pipeline, freed on leaving (llvmlite does not
    free them when they are collected: 160 KB a compile otherwise)."""
    _vectoriser_options()
    options = llvm.PipelineTuningOptions(speed_level=level)
    options.loop_vectorization = True
    options.slp_vectorization = True
    # Unrolling made mlp_digits' module 8 times larger (1.1 MB of IR) and its cold compile 1.46 s
    # instead of 0.43 s, for no measured gain: the vectorised loops run as fast (grad at batch 32,
    # 0.95 vs 0.93 ms at best of 15).
    options.loop_unrolling = False
    builder = llvm.create_pass_builder(target_machine, options)
    manager = builder.getModulePassManager()
    try:
        yield builder, manager
    finally:
        _dispose_pass_manager(manager)
        builder.close()
        options.close()


def _dispose_pass_manager(manager) -> None:
    """Free a new-pass-manager pipeline and its passes. In llvmlite (0.50 and its main branch as of
    2026-12) `ModulePassManager.close()` frees nothing: the class lists `ffi.ObjectRef` before the
    base that defines its `_dispose`, so ObjectRef's empty one wins. The passes kept their tables
    (GVN's above all): 1.2 MB leaked per mlp_digits optimisation, 0.26 MB per rosenbrock one."""
    if type(manager)._dispose is ffi.ObjectRef._dispose:  # the defect is there: free it ourselves, once
        ffi.lib.LLVMPY_DisposeNewModulePassManger(manager)
        manager.detach()
    else:  # a fixed llvmlite
        manager.close()


class Compiled:
    """Machine code: the engine that owns it (and its module, target machine and context), the
    functions' addresses, and the object file it was made from (what the disk cache keeps)."""

    def __init__(self, engine, context, addresses: dict[str, int], object_code: bytes):
        # The engine owns the module, whose types and constants live in the context: the context
        # must go after the engine. Freed by its own finalizer, it could go first: the cycle
        # collector finalizes a cycle's objects in any order, and a context freed first frees the
        # engine's module with it (a segfault in ~MCJIT when the engine goes, seen in the suite).
        # So this object alone frees it, through the raw pointer (a finalized ContextRef forgets it).
        context._owned = True
        self.engine, self._context, self._context_pointer = engine, context, context._ptr
        self.addresses, self.object_code = addresses, object_code

    def address(self, function: str) -> int:
        return self.addresses[function]

    def __del__(self):
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()  # (nothing if the collector finalized it first: it is then gone already)
        pointer, self._context_pointer = self._context_pointer, None
        if pointer is not None:
            ffi.lib.LLVMPY_ContextDispose(pointer)


# Object code of recent compiles, by their input: a module compiled again (a model freed and made
# again, a variant that lowers to a kernel already made) is loaded, not optimised again. In this
# process only, so `cache=False` still means nothing read from disk.
RECENT_OBJECT_BYTES = 32 << 20
_recent: OrderedDict[bytes, bytes] = OrderedDict()  # digest -> object code
_recent_lock = threading.Lock()


def compile_ir(llvm_ir: str, functions: tuple[str, ...], level: int = 3) -> Compiled:
    digest = hashlib.sha256(f"{level}|{','.join(functions)}|".encode() + llvm_ir.encode()).digest()
    with _recent_lock:
        hit = _recent.get(digest)
        if hit is not None:
            _recent.move_to_end(digest)
    if hit is not None:
        return load_object(hit, functions)
    compiled = _compile(llvm_ir, functions, level)
    with _recent_lock:
        _recent[digest] = compiled.object_code
        while sum(map(len, _recent.values())) > RECENT_OBJECT_BYTES:
            _recent.popitem(last=False)
    return compiled


def _compile(llvm_ir: str, functions: tuple[str, ...], level: int) -> Compiled:
    # Ctrl-C is held to the end: llvmlite's wrappers are Python between C calls, and an interrupt
    # there leaves half-made objects whose finalisers print tracebacks at exit (seen in a kernel
    # compiled while training: `spadc train` must say one line); the optimiser itself, in C++, would
    # not see Ctrl-C before its end anyway.
    with interrupts_deferred():
        target_machine = native_target(level)
        context = llvm.create_context()  # the module's own, freed with it
        module = optimise(llvm_ir, target_machine, level, context)
        engine = llvm.create_mcjit_compiler(module, target_machine)
        emitted = []
        engine.set_object_cache(lambda _module, code: emitted.append(bytes(code)), None)
        engine.finalize_object()
        compiled = Compiled(engine, context, {name: engine.get_function_address(name) for name in functions},
                            emitted[0] if emitted else b"")
    release_compiler_pages()  # LLVM's code is not needed while the kernels run (resident.py)
    return compiled


def load_object(object_code: bytes, functions: tuple[str, ...]) -> Compiled:
    """Machine code from an object file that `compile_ir` made on this machine (spadc/cache.py)."""
    with interrupts_deferred():  # as compile_ir
        target_machine = native_target()
        context = llvm.create_context()
        empty = llvm.parse_assembly("", context)
        empty.triple = target_machine.triple
        empty.data_layout = str(target_machine.target_data)
        engine = llvm.create_mcjit_compiler(empty, target_machine)
        engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
        engine.finalize_object()
        compiled = Compiled(engine, context, {name: engine.get_function_address(name) for name in functions},
                            object_code)
    release_compiler_pages()  # (linking touches LLVM's code too)
    return compiled
