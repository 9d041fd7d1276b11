"""The once-per-call parts of a split kernel (spadc/passes/hoist.py): the prologue computes the
hoisted values before the samples; the epilogue, after them, turns their summed adjoints into the
params' gradients. Each is an internal function of the kernel's module, with a memory plan of its own.

Workspace of a split kernel: [ per-sample plan | prologue's and epilogue's own (overlapping it: they
never run with the samples) | hoisted values | their adjoints (gradient kernels) ]. The hoisted
values and adjoints sit above every plan, so no plan ever reuses their bytes.

Invariants:
- The prologue and the epilogue report a failed check as the kernel does (one `checks` list, one
  numbering), with no sample (-1): what they compute is every sample's.
- A hoisted value is bound as a param every lane shares; its adjoint as a running sum.
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
    split: Split
    values: dict[str, int]  # hoisted name -> byte offset in the workspace
    adjoints: dict[str, int]  # hoisted name -> byte offset of its adjoint's running sum (gradient kernels)
    workspace: int  # bytes of the whole workspace


def _aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


def lay_out(split: Split, kernel_plan_size: int, float_bytes: int, prologue_size: int, epilogue_size: int,
            with_adjoints: bool) -> Hoisting:
    offset = _aligned(max(kernel_plan_size, prologue_size, epilogue_size))
    values, adjoints = {}, {}
    for decl in split.hoisted:
        values[decl.name] = offset
        offset += slot_bytes(decl.value, float_bytes)
    if with_adjoints:
        for decl in split.hoisted:
            adjoints[decl.name] = offset
            offset += slot_bytes(decl.value, float_bytes)
    return Hoisting(split, values, adjoints, offset)


def _function(module, name: str, float_type, extra: list[tuple[str, object]]):
    arguments = [("params", float_type.as_pointer()), ("workspace", I8P), ("status", I64.as_pointer()),
                 ("sample", I64)] + extra
    function = ir.Function(module, ir.FunctionType(I64, [t for _, t in arguments]), name=name)
    function.linkage = "internal"
    return name_arguments(function, [n for n, _ in arguments]), function


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


def prologue(module, symbol: str, split: Split, float_type, float_bytes: int, checks, param_offsets, max_memory=None):
    """(the prologue function, its plan's size, `finish`): the function computes every hoisted
    value into the workspace; `finish(values)` emits its body once the caller has placed them
    (`values`: hoisted name -> byte offset, which depends on the plans' sizes)."""
    program = split.prologue
    plan_ = plan(program, float_bytes, lockstep=in_lockstep(program))
    check_limit(program, plan_, max_memory, "kernel's once-per-call part", float_bytes)
    args, function = _function(module, f"{symbol}.prologue", float_type, [])
    e = FunctionEmitter(function, float_type, plan_, args["workspace"], args["status"], checks)
    e.sample, e.options, e.names_sample = args["sample"], {}, False
    _bind_params(e, program, args, param_offsets)

    def finish(values: dict[str, int]):
        _emit_body(e, program.body)
        with _at_the_lane(e):
            for decl in split.hoisted:
                target = Value(decl.value.type)
                e.bind(target, e.b.gep(args["workspace"], [I64(values[decl.name])], inbounds=True))
                e.copy(decl.value, target)
        e.b.ret(I64(0))
        e.finish_entry()
    return function, plan_.size, finish


def epilogue(module, symbol: str, split: Split, float_type, float_bytes: int, checks, param_offsets, max_memory=None):
    """(the epilogue function, its plan's size, `finish`): the function adds the prologue's
    vector-Jacobian product with the hoisted values' summed adjoints to the params' gradients
    (`grads`, at `param_offsets`); `finish(adjoints)` emits its body once the adjoints are placed."""
    product = gradient(split.product, accumulate=True)
    product.program = run_passes(product.program)
    program = product.program
    writable = frozenset(v.id for v in product.accumulators.values())
    # (In lockstep with one lane, a running sum need not be updated in place: kernels.grad_kernel.)
    plan_ = plan(program, float_bytes, writable, lockstep=in_lockstep(program))
    check_limit(program, plan_, max_memory, "gradient kernel's once-per-call adjoint", float_bytes)
    args, function = _function(module, f"{symbol}.epilogue", float_type, [("grads", float_type.as_pointer())])
    e = FunctionEmitter(function, float_type, plan_, args["workspace"], args["status"], checks)
    e.sample, e.options, e.names_sample = args["sample"], {}, False
    _bind_params(e, program, args, param_offsets)
    for name, accumulator in product.accumulators.items():
        e.bind(accumulator, e.b.gep(args["grads"], [I64(param_offsets[name])], inbounds=True))

    def finish(adjoints: dict[str, int]):
        for decl in split.product.inputs:
            e.bind(decl.value, e.b.gep(args["workspace"], [I64(adjoints[decl.name.removesuffix(".adjoint")])],
                                       inbounds=True))
        _emit_body(e, program.body)
        with _at_the_lane(e):
            for name, value in product.gradients.items():
                e.copy(value, product.accumulators[name])  # nothing to do when it was updated in place
        e.b.ret(I64(0))
        e.finish_entry()
    return function, plan_.size, finish


def call(e, function, args: dict, extra=()):
    """Call a prologue or epilogue from the kernel; return its failed check, if any, at once."""
    b = e.b
    failed = b.call(function, [args["params"], args["workspace"], args["status"], args["sample_offset"], *extra])
    with b.if_then(b.icmp_signed("!=", failed, I64(0)), likely=False):
        b.ret(failed)


def bind_values(e, hoisting: Hoisting, workspace, adjoints_of: dict | None = None):
    """Bind each hoisted value (a param of the per-sample program) to its bytes; with
    `adjoints_of` (hoisted name -> the gradient program's accumulator), bind those too."""
    for decl in hoisting.split.hoisted:
        e.bind(decl.value, e.b.gep(workspace, [I64(hoisting.values[decl.name])], inbounds=True,
                                   name=llvm_name(decl.name)))
        if adjoints_of is not None:
            e.bind(adjoints_of[decl.name], e.b.gep(workspace, [I64(hoisting.adjoints[decl.name])], inbounds=True))
