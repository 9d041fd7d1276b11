"""A lane kernel's runs as functions of their own: a run (ops that go lane by lane in one loop,
spadc/backend/memory.py `lane_runs`) is emitted as a function of its storages and lane count, and
runs whose functions come out the same (up to names) share one, called from each.

Why: with the products called (spadc/backend/routines.py), what grew with a deep network's depth
was the runs between them (a layer's bias, activation and its mask, and their adjoints), one
loop nest per layer in one function, and LLVM's loop passes take time that grows faster than the
function (LoopVectorize: 0.12 s at 16 layers, 1.34 s at 64). The layers of one shape now share
their runs' code as they share their products'.

Invariants:
- A run's function is the code the kernel would have had inline (the emitters of
  spadc/backend/codegen.py, with its storages reached through the parameters): the same bits.
- Each storage the run touches is one parameter (its storage for lane 0) and, unless every lane
  shares it, a second (bytes between lanes); then the lane count and the kernel's context (see
  `_RunEmitter`). A storage is `noalias` unless it shares bytes with another storage or an op's
  scratch of the run: with several lanes, a run's workspace storages are alive through all of it
  (memory.py `_span`), so none does; with one, values that die in a run (outside a group of fused
  elementwise ops) give their bytes to later ones, and those are not `noalias` (LLVM could move a
  store to one above a load of the other). The caller's buffers are apart (docs/interface.md).
  Without `noalias` a chain
  of functions of a param stayed in the lane loop and LLVM's loop vectoriser never finished
  (tests/test_hostile_programs.py; as codegen.py's `name_arguments` says of the kernels). Two runs share a function only
  if their functions' texts are equal once local names are numbered in order of appearance, so a
  shared function is the one each run would have had.
- A scalar the run makes and alone reads (`registers`) is a stack slot of the run's function,
  which LLVM makes a register, not a workspace slot per lane: each lane's pass over the run writes
  it before it reads it, and nothing reads it after. Their stores were a fifth of those left in a
  mixture's optimised gradient module (`spadc llvm --grad --optimised`, D = 10, K = 25: 499
  stores, 395 without them).
- A run's failed run-time check writes the kernel's status buffer and returns its id, which the
  kernel then returns: as the check inline would.
- A run that reads a view (whose pointer is made per lane, in the kernel) stays inline: `touched`
  says so, or the run's emitter raises `NeedsKernel` where it would make one, and the half-made
  function is dropped.
"""

from __future__ import annotations

import re

import numpy as np
from llvmlite import ir

from ..ir.core import reads, walk_ops
from .codegen import FunctionEmitter

I8, I64 = ir.IntType(8), ir.IntType(64)
BYTES = I8.as_pointer()


class NeedsKernel(Exception):
    """The run reads something only its kernel has: it is emitted inline."""


class _RunEmitter(FunctionEmitter):
    """Emits a run into its own function: every storage the run touches through `lane_inputs`
    (its lane-0 pointer and stride); of the kernel's, its status buffer and the block's first
    sample (for a failed check, which returns its id), its run-time options, the loop iteration,
    and the workspace (for an op's scratch space, which no storage of the run overlaps)."""

    def bind_view(self, value, source, offset):
        raise NeedsKernel("a view")

    def lanes(self, run):
        with self.loop(self.count, "lane", over_lanes=True) as local:
            self.local, self.sample = local, self.b.add(self.first, local, name="sample")
            self._run(run)


def touched(plan, run) -> list | None:
    """One value per storage the run's ops (and their regions) read or write, in order of first
    appearance; None if one is a view (its pointer is made per lane, in the kernel)."""
    values, seen = [], set()

    def visit(ops):
        for op in ops:
            for value in (*op.args, *op.results):
                yield value
            for region in op.regions:
                yield from region.params
                yield from visit(region.ops)
                yield from region.yields

    for value in visit(run):
        if value.id in plan.views:
            return None
        owner = plan.owner(value)
        if owner not in seen:
            seen.add(owner)
            values.append(value)
    return values


def sharing_bytes(plan, storages, run) -> set[int]:
    """Owners of the run's workspace storages whose bytes overlap another's of them, or an op's scratch."""
    owners = sorted({plan.owner(value) for value in storages if plan.owner(value) in plan.offsets})
    ops = [inner for op in run for inner in (op, *(nested for region in op.regions for nested in walk_ops(region)))]
    scratch = [id(op) for op in ops if id(op) in plan.scratch]
    starts = np.array([plan.offsets[o] for o in owners] + [plan.scratch[k] for k in scratch], dtype=np.int64)
    ends = starts + np.array([plan.sizes[key] for key in owners + scratch], dtype=np.int64)
    overlap = (starts[:, None] < ends[None, :]) & (starts[None, :] < ends[:, None])
    np.fill_diagonal(overlap, False)
    return {owner for owner, hit in zip(owners, overlap[:len(owners)].any(axis=1)) if hit}


def registers(plan, run, block, readers: dict[int, set[int]] | None = None) -> frozenset[int]:
    """The storages of scalars one lane's pass over `run` (of lane block `block`) makes and reads,
    that nothing reads after it: each lane's copy is a register of the run's function (its slot in
    the workspace would be stored to and never read). A storage qualifies when every value it holds
    is a scalar result of one of the run's ops, read neither by the block's other ops, nor as a
    yield of the block, nor by the kernel after the body (the loss, the outputs). `readers`:
    `block_readers(block)`, made once per block (a run per block would make it again)."""
    readers = block_readers(block) if readers is None else readers
    inside = {id(op) for op in run}
    outside = {v.id for v in block.yields} | plan.read_after
    made = {r.id for op in run for r in op.results if not r.type.rank}
    owners = {plan.owner(r) for op in run for r in op.results} & made & plan.batched
    held = {owner: plan.holders.get(owner, set()) | {owner} for owner in owners}  # the values each holds
    return frozenset(owner for owner, values in held.items()
                     if values <= made and not values & outside
                     and all(readers.get(vid, set()) <= inside for vid in values))


def block_readers(block) -> dict[int, set[int]]:
    """value id -> id() of the ops of `block` that read it (in their regions too)."""
    readers = {}
    for op in block.ops:
        for vid in reads(op):
            readers.setdefault(vid, set()).add(id(op))
    return readers


def emit_run(e, run, block, readers=None) -> bool:
    """Emit `run` (of lane block `block`, whose `block_readers` are `readers`) over the block's
    lanes as a call of its function; False (nothing emitted) if the run needs its kernel (see the
    module's docstring)."""
    storages = touched(e.plan, run)
    if storages is None:
        return False
    local = registers(e.plan, run, block, readers)
    storages = [value for value in storages if e.plan.owner(value) not in local]
    shared = [e.shared(value) for value in storages]
    parameters = [t for lane_shared in shared for t in ([BYTES] if lane_shared else [BYTES, I64])]
    options = sorted(e.options)
    parameters += [I64, I64.as_pointer(), I64, I64, BYTES] + [e.options[name].type for name in options]
    module = e.b.module
    function = ir.Function(module, ir.FunctionType(I64, parameters), name=module.get_unique_name("spadc.run"))
    function.linkage = "internal"
    function.attributes.add("noinline")
    function.attributes.add("nounwind")
    checks_before = len(e.checks)
    r = _RunEmitter(function, e.float, e.plan, None, None, e.checks)
    r.names_sample, r.constants = e.names_sample, e.constants  # (a constant is one in any function)
    r.registers = local
    arguments = iter(function.args)
    overlapping = sharing_bytes(e.plan, storages, run)
    for value, lane_shared in zip(storages, shared):
        base = next(arguments)
        if e.plan.owner(value) not in overlapping:
            base.add_attribute("noalias")
        r.lane_inputs[e.plan.owner(value)] = (base, I64(0) if lane_shared else next(arguments))
    r.count, r.status, r.first, r.iteration, r.workspace = (next(arguments) for _ in range(5))
    r.options = {name: next(arguments) for name in options}
    try:
        r.lanes(run)
    except NeedsKernel:
        del module.globals[function.name]
        del e.checks[checks_before:]
        return False
    r.b.ret(I64(0))
    r.finish_entry()
    checked = len(e.checks) > checks_before
    made = function
    function = e.shared_runs.setdefault(_normal_text(made), made)
    if function is not made:  # an earlier run's function is the same: this one's copy goes
        del module.globals[made.name]
    call_arguments = []
    for value, lane_shared in zip(storages, shared):
        pointer, stride = e.lane_layout(value)
        call_arguments.append(e.b.bitcast(pointer, BYTES))
        if not lane_shared:
            call_arguments.append(stride)
    kernel = [e.count, e.status, e.first, e.iteration, e.workspace] + [e.options[name] for name in options]
    failed = e.b.call(function, call_arguments + kernel)
    if checked:  # a failed check's id, its status already written: the kernel returns it
        fail = e.b.append_basic_block("run.fail")
        done = e.b.append_basic_block("run.ok")
        e.b.cbranch(e.b.icmp_signed("!=", failed, I64(0)), fail, done)
        e.b.position_at_end(fail)
        e.b.ret(failed)
        e.b.position_at_end(done)
    return True


_METADATA = re.compile(r"!\d+\b")  # a loop's identity (codegen.py `_not_vectorised`): one per loop
_LOCAL = re.compile(r'%"[^"]*"|%[-\w$.]+|^"[^"]*":|^[-\w$.]+:', re.M)


def _normal_text(function) -> str:
    """The function's text with its own name dropped, its local names (values, blocks) numbered in
    order of appearance and its metadata unnamed: equal for two functions that differ only in names."""
    numbers: dict[str, str] = {}

    def number(match):
        token = match.group(0)
        name = token.lstrip("%").rstrip(":").strip('"')
        label = numbers.setdefault(name, f"n{len(numbers)}")
        return f"{label}:" if token.endswith(":") and not token.startswith("%") else f"%{label}"

    text = re.sub(rf'@"?{re.escape(function.name)}"?\(', "@self(", str(function), count=1)
    return _METADATA.sub("!md", _LOCAL.sub(number, text))
