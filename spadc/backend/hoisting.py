"""The once-per-call parts of a split kernel (spadc/passes/hoist.py): the prologue computes the
hoisted values before the samples; the epilogue, after them, turns their adjoints into the params'
gradients. Each is a function of the kernel's module with a memory plan of its own, exported (for
the runtime, which runs them once per batch of several calls: spadc/backend/kernels.py):

    int64_t <grad>_hoist(const T *params, void *workspace, int64_t *status, T *hoisted);
    int64_t <grad>_finish(const T *params, void *workspace, int64_t *status, T *grads, const T *adjoints);

`hoisted` receives the hoisted values, each at its offset in the *hoisted block* (`Hoisting.offsets`);
`adjoints` holds their adjoints, laid out the same; `_finish` adds the prologue's vector-Jacobian
product with them to `grads`.

Workspace of a split kernel: [ per-sample plan | prologue's and epilogue's own (overlapping it: they
never run with the samples) | hoisted block | its adjoints (gradient kernels) ]. The hoisted
values and adjoints sit above every plan, so no plan ever reuses their bytes.

Invariants:
- The prologue and the epilogue report a failed check as the kernel does (one `checks` list, one
  numbering), with no sample (-1): what they compute is every sample's.
- A hoisted value is bound as a param every lane shares; its adjoint as a running sum.
- The hoisted block's slots are 64-byte aligned, as the workspace's: its padding is never read.
- The prologue's and epilogue's plans meet the memory limit as the kernel's does; the hoisted
  values add at most twice spadc.passes.hoist.HOIST_BYTES.
- A big prologue or epilogue (codegen.py `in_lockstep`) runs as a lane kernel of one lane does: in
  runs, each a function of its own, for LLVM's sake (as the kernels).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

from llvmlite import ir

from ..ad.reverse import gradient
from ..ir.core import Value
from ..passes import run as run_passes
from ..passes.hoist import Split
from .codegen import I64, FunctionEmitter, in_lockstep, name_arguments
from .emitters import llvm_name
from .memory import ALIGN, check_limit, plan, slot_bytes

I8P = ir.IntType(8).as_pointer()


@dataclass
class Hoisting:
    """Where a kernel's workspace holds the hoisted block and its adjoints' block."""
    block: int  # bytes of the hoisted block
    values_at: int  # byte offset of the hoisted block in the workspace
    adjoints_at: int | None  # byte offset of the adjoints' block (gradient kernels)
    workspace: int  # bytes of the whole workspace


def _aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


def block_offsets(split: Split, float_bytes: int) -> dict[str, int]:
    """Each hoisted value's byte offset in the hoisted block."""
    offsets, at = {}, 0
    for decl in split.hoisted:
        offsets[decl.name] = at
        at += slot_bytes(decl.value, float_bytes)
    return offsets


def block_bytes(split: Split, float_bytes: int) -> int:
    return sum(slot_bytes(decl.value, float_bytes) for decl in split.hoisted)


def lay_out(split: Split, kernel_plan_size: int, float_bytes: int, prologue_size: int, epilogue_size: int,
            with_adjoints: bool) -> Hoisting:
    block = block_bytes(split, float_bytes)
    values_at = _aligned(max(kernel_plan_size, prologue_size, epilogue_size))
    adjoints_at = values_at + block if with_adjoints else None
    return Hoisting(block, values_at, adjoints_at, values_at + block * (2 if with_adjoints else 1))


def _function(module, name: str, float_type, extra: list[tuple[str, object]]):
    arguments = [("params", float_type.as_pointer()), ("workspace", I8P), ("status", I64.as_pointer())] + extra
    function = ir.Function(module, ir.FunctionType(I64, [t for _, t in arguments]), name=name)
    return name_arguments(function, [n for n, _ in arguments]), function


def _at(e, base, offsets: dict[str, int], name: str):
    return e.b.gep(base, [I64(offsets[name])], inbounds=True, name=llvm_name(name))


def _bind_params(e, program, args, param_offsets: dict[str, int]):
    for decl in program.params:
        e.bind(decl.value, e.b.gep(args["params"], [I64(param_offsets[decl.name])], inbounds=True,
                                   name=llvm_name(decl.name)))


def _emit_body(e, body):
    """The body's ops, in runs if the plan is in lockstep (a block of one lane, named no sample)."""
    if e.plan.lockstep:
        e.count, e.first = I64(1), e.sample
        e.lane_block(body)
    else:
        e.block(body)


def _at_the_lane(e):
    """Where the body's values are read after it: its one lane, in lockstep."""
    return e.samples() if e.plan.lockstep else nullcontext()


def prologue(module, symbol: str, split: Split, float_type, float_bytes: int, checks, param_offsets,
             max_memory=None) -> tuple[ir.Function, int]:
    """(`<symbol>_hoist`, its plan's size): the function computes every hoisted value into the
    hoisted block it is given."""
    program = split.prologue
    plan_ = plan(program, float_bytes, lockstep=in_lockstep(program))
    check_limit(program, plan_, max_memory, "kernel's once-per-call part", float_bytes)
    args, function = _function(module, f"{symbol}_hoist", float_type, [("hoisted", I8P)])
    e = _emitter(function, float_type, plan_, args, checks)
    _bind_params(e, program, args, param_offsets)
    offsets = block_offsets(split, float_bytes)
    _emit_body(e, program.body)
    with _at_the_lane(e):
        for decl in split.hoisted:
            target = Value(decl.value.type)
            e.bind(target, _at(e, args["hoisted"], offsets, decl.name))
            e.copy(decl.value, target)
    e.b.ret(I64(0))
    e.finish_entry()
    return function, plan_.size


def epilogue(module, symbol: str, split: Split, float_type, float_bytes: int, checks, param_offsets,
             max_memory=None) -> tuple[ir.Function, int]:
    """(`<symbol>_finish`, its plan's size): the function adds the prologue's vector-Jacobian
    product with the hoisted values' adjoints (`adjoints`, a block laid out as the hoisted one) to
    the params' gradients (`grads`, at `param_offsets`)."""
    product = gradient(split.product, accumulate=True)
    product.program = run_passes(product.program)
    program = product.program
    writable = frozenset(v.id for v in product.accumulators.values())
    # (In lockstep with one lane, a running sum need not be updated in place: kernels.grad_kernel.)
    plan_ = plan(program, float_bytes, writable, lockstep=in_lockstep(program))
    check_limit(program, plan_, max_memory, "gradient kernel's once-per-call adjoint", float_bytes)
    args, function = _function(module, f"{symbol}_finish", float_type,
                               [("grads", float_type.as_pointer()), ("adjoints", I8P)])
    e = _emitter(function, float_type, plan_, args, checks)
    _bind_params(e, program, args, param_offsets)
    for name, accumulator in product.accumulators.items():
        e.bind(accumulator, e.b.gep(args["grads"], [I64(param_offsets[name])], inbounds=True))
    offsets = block_offsets(split, float_bytes)
    for decl in split.product.inputs:
        e.bind(decl.value, _at(e, args["adjoints"], offsets, decl.name.removesuffix(".adjoint")))
    _emit_body(e, program.body)
    with _at_the_lane(e):
        for name, value in product.gradients.items():
            e.copy(value, product.accumulators[name])  # nothing to do when it was updated in place
    e.b.ret(I64(0))
    e.finish_entry()
    return function, plan_.size


def _emitter(function, float_type, plan_, args, checks) -> FunctionEmitter:
    e = FunctionEmitter(function, float_type, plan_, args["workspace"], args["status"], checks)
    e.sample, e.options, e.names_sample = I64(-1), {}, False
    return e


def call(e, function, args: dict, *extra):
    """Call a prologue or epilogue from a kernel; return its failed check, if any, at once."""
    b = e.b
    failed = b.call(function, [args["params"], args["workspace"], args["status"], *extra])
    with b.if_then(b.icmp_signed("!=", failed, I64(0)), likely=False):
        b.ret(failed)


def block_pointer(e, base, at: int):
    return e.b.gep(base, [I64(at)], inbounds=True)


def bind_values(e, split: Split, float_bytes: int, hoisted, adjoints=None, adjoints_of: dict | None = None):
    """Bind each hoisted value (a param of the per-sample program) to its slot of the block at
    `hoisted`; with `adjoints` (the adjoints' block) and `adjoints_of` (hoisted name -> the
    gradient program's accumulator), bind those too."""
    offsets = block_offsets(split, float_bytes)
    for decl in split.hoisted:
        e.bind(decl.value, _at(e, hoisted, offsets, decl.name))
        if adjoints is not None:
            e.bind(adjoints_of[decl.name], _at(e, adjoints, offsets, decl.name))
