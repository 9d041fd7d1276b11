"""LLVM code for one IR block: storage of values, loop nests, region ops and run-time checks.

Every value is reached through a pointer: scalars through an `alloca` in the entry block (promoted
to registers by LLVM's mem2reg), tensors through their workspace slot (spadc/backend/memory.py) or
the caller's buffer. Bools are i8 in memory and i1 in registers. Primitive emitters
(spadc/backend/emitters.py) use `load`, `store` and `loop` and never see where a value lives.

Invariants:
- Allocas are only ever created in the function's entry block.
- Values are named after the source variables they came from (`h`, `h.adj`), so the printed LLVM
  (`spadc llvm`) can be read against the source.
- A failed run-time check stores (check id, offending value) into the status buffer and returns the
  check id from the kernel; nothing is read or written out of bounds first.

Lanes: with a plan for L > 1 lanes, a kernel runs the samples of a batch L at a time, op by op
(`lane_block`): each run of ops of a lane block (memory.py `lane_runs`) runs for every sample of
the block (`samples`; a function of its own where it can be, spadc/backend/outline.py) before the
next starts, except where a lane emitter (spadc/backend/gemm.py) does the whole block at once
(a matrix-matrix product). A plan in `lockstep` with one lane (a big program) runs so too. Loops
and comprehensions run once for all lanes, their bodies op by op; a `cond` runs sample by sample
(a `uniform` one, whose condition every sample shares, once for all lanes, like a loop).
A value of a lane block is reached at the current lane (`local`); a param, a running sum or
another shared value the same for every lane.
"""

from __future__ import annotations

import itertools
import math
import struct
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from llvmlite import ir

from ..errors import Loc
from ..ir.core import Block, Op, Value, flat_iteration, walk_ops
from .emitters import EMITTERS, elementwise_group, fused_groups, llvm_name
from . import lane_ops
from .target import has_masked_vectors, has_wide_vectors
from .memory import MemoryPlan, lane_runs, runs_over_lanes

I1, I8, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(64)


def name_arguments(function, names):
    """Name a kernel's arguments and return them by name. `params` is declared `noalias`: kernels
    only read it, and the ABI forbids a buffer the kernel writes overlapping it (docs/interface.md).
    LLVM may then move a param's loads and what is computed from them out of loops: a chain of
    transcendental functions of a param, left inside a lane loop, sent LLVM 22's loop vectoriser
    into a search that never ended (the fuzzer's seed 1103586)."""
    for arg, name in zip(function.args, names):
        arg.name = name
        if name == "params":
            arg.add_attribute("noalias")
    return {arg.name: arg for arg in function.args}


def element_bytes(element) -> int:
    return {"double": 8, "float": 4, "i64": 8, "i8": 1}[str(element)]


@dataclass(frozen=True)
class Check:
    """A run-time check: `message` has a `{value}` placeholder for the offending value."""
    message: str
    loc: Loc


UNROLLED = 4  # entries up to which an elementwise op or a copy is straight-line code (`each`)
RAGGED_UNROLLED = 16  # and up to which it is when the entries do not fill whole vectors


def straight_line(count: int) -> bool:
    """Whether `count` entries (of a known count) are straight-line code rather than a loop. Up to
    UNROLLED always. On a target with masked vector stores (AVX2, AVX-512), also up to
    RAGGED_UNROLLED when they are not a whole number of its vectors of f64: LLVM (loop unrolling
    off, spadc/backend/jit.py) vectorises a loop of so few trips by masking its last vector, and a
    masked store is not forwarded to the next op's load of the same entries. That stall was most of
    a Gaussian mixture's gradient (vectors of 10, bench/gmm.py: 3.19 ms, 1.93 ms straight-line on
    a Zen 4 core; 4.00 and 2.26 ms built for a Zen 3's AVX2). A whole number of vectors stays a
    loop (an LSTM's cells of 16 entries took 2.4 times as long to compile straight-line), and so
    does code for other targets (a Cortex-M4 build of the digits MLP: 36.5 KB of code against
    22.2 KB)."""
    if count <= UNROLLED:
        return True
    if not has_masked_vectors() or count > RAGGED_UNROLLED:
        return False
    return count % (8 if has_wide_vectors() else 4) != 0


LOCKSTEP_LOOPS = 128  # loops beyond which a program's one-lane kernels run as lane kernels of one lane


def in_lockstep(program) -> bool:
    """Whether a one-lane kernel of `program` runs its ops as a lane kernel of one lane does: in
    runs, each a function of its own (spadc/backend/outline.py). LLVM's loop passes take time that
    grows with the square of a function's loops: a chain of 30 statements on vectors of 6 (750
    ops, nearly all loops) took 4.7 s to compile as one function and 1.8 s in runs. A program of
    scalars has no loops (a sum of 1,000 terms: no faster in runs, and its plan much slower)."""
    return loops_estimate(program.body) > LOCKSTEP_LOOPS


def loops_estimate(block: Block) -> int:
    """About how many loops a block's code has: one per region op, one per axis of a result of more
    than UNROLLED entries. (Results of up to RAGGED_UNROLLED entries that `straight_line` writes out
    count too: as code to optimise they weigh about as much as the loop.)"""
    return sum(1 if op.regions else sum(result.type.rank for result in op.results if result.type.size > UNROLLED)
               for op in walk_ops(block))


def _known(value) -> int | None:
    """The integer a value is known to be when it is an integer constant, else None."""
    if isinstance(value, ir.Constant) and isinstance(value.type, ir.IntType) and isinstance(value.constant, int):
        return value.constant
    return None


class FoldingBuilder(ir.IRBuilder):
    """An IRBuilder that folds integer `add`, `sub` and `mul` of known operands (and x + 0, x * 1,
    x * 0) as it builds. Index arithmetic of straight-line code is mostly of constants: unfolded, a
    fuzzer's Hessian-product kernel was 164,000 lines of LLVM, a third of them `mul i64 2, 4` and
    the like, each of which every pass then visits before InstCombine folds it."""

    def _fold(self, lhs, rhs, compute, identity, absorbing, name, flags, build):
        a, b = _known(lhs), _known(rhs)
        if a is not None and b is not None and lhs.type == rhs.type:
            bits = lhs.type.width
            value = compute(a, b) & ((1 << bits) - 1)
            return ir.Constant(lhs.type, value - (1 << bits) if bits > 1 and value >> (bits - 1) else value)
        if b == identity or (a == identity and compute is not _sub):
            return lhs if b == identity else rhs
        if absorbing is not None and absorbing in (a, b):
            return ir.Constant(lhs.type, absorbing)
        return build(lhs, rhs, name, flags)

    def add(self, lhs, rhs, name="", flags=()):
        return self._fold(lhs, rhs, _add, 0, None, name, flags, super().add)

    def sub(self, lhs, rhs, name="", flags=()):
        return self._fold(lhs, rhs, _sub, 0, None, name, flags, super().sub)

    def mul(self, lhs, rhs, name="", flags=()):
        return self._fold(lhs, rhs, _mul, 1, 0, name, flags, super().mul)


def _add(a, b):
    return a + b


def _sub(a, b):
    return a - b


def _mul(a, b):
    return a * b


def _not_vectorised(module) -> ir.MDValue:
    """Loop metadata that keeps LLVM's loop vectoriser off a loop (its first operand itself, as
    LLVM requires of a loop's identity). Over lanes, a body without loops of its own vectorised
    across the lanes, one lane's entries a stride apart, with gathers and scatters; off, the
    SLP vectoriser takes each lane's entries as vectors instead: the LSTM's gradient 9% faster
    and no kernel of the benchmark table slower (A/B on one core of the Zen 4), same bits."""
    off = module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.enable"), ir.Constant(ir.IntType(1), 0)])
    identity = ir.MDValue(module, [off], name=str(len(module.metadata)))
    identity.operands = (identity, off)
    return identity


class FunctionEmitter:
    def __init__(self, function: ir.Function, float_type, plan: MemoryPlan, workspace, status, checks: list[Check]):
        self.function = function
        self.float = float_type
        self.plan = plan
        self.workspace = workspace
        self.status = status
        self.checks = checks
        entry = function.append_basic_block("entry")
        self._entry = ir.IRBuilder(entry)
        self.b = FoldingBuilder(function.append_basic_block("start"))
        self._pointers: dict[int, ir.Value] = {}
        self._lane_pointers: dict[tuple, tuple] = {}  # (value, lane) -> (basic block, base, lane, pointer)
        self.iteration = I64(0)  # the flat index of the enclosing loop and tabulate indices (spadc/rng.py)
        self.sample = None  # the sample's index in the whole batch (set by the kernel)
        self.names_sample = True  # a failed check names its sample (not in a once-per-call part: -1)
        self.options = {}  # run-time options and buffers (set by the kernel)
        self.tape_bytes: dict[int, int] = {}  # id(loop op) -> bytes it keeps per iteration, counted in *stored
        self.local = None  # the current lane (an i64 register), where values of lane blocks are read
        self.count = None  # how many lanes the current block of samples fills
        self.first = None  # the key (index in the whole batch) of the block's first sample
        self.lane_inputs: dict[int, tuple] = {}  # input id -> (the block's first sample's bytes, bytes per sample)
        self.shared_runs: dict[str, ir.Function] = {}  # a run's function by its text (spadc/backend/outline.py)
        self.registers: frozenset[int] = frozenset()  # lane scalars' storages kept in registers (outline.registers)
        # Scalars known at compile time, by value id: read as LLVM constants rather than from their
        # slots (which still hold them), so that LLVM folds them: `x ^ 2` becomes one multiply
        # instead of a call of libm's pow, and its adjoint's `x ^ (2 - 1)` plain `x`.
        self.constants: dict[int, ir.Constant] = {}

    def finish_entry(self):
        """Close the entry block (allocas only) by jumping to the first block of code."""
        self._entry.branch(self.function.basic_blocks[1])

    # ---- types and storage --------------------------------------------------------

    def alloca(self, type_, name: str = "", count: int | None = None):
        """Stack storage, always placed in the entry block so that mem2reg can promote it."""
        return self._entry.alloca(type_, I64(count) if count else None, name=name)

    def zero(self, value: Value):
        """Fill `value`'s storage with zeros."""
        with self.loop(value.type.size, "zero") as j:
            self.store(value, j if value.type.rank else None, ir.Constant(self.storage_type(value.type.dtype), 0))

    def scratch(self, op):
        """The workspace bytes planned for `op` to work in while it runs (spadc/backend/memory.py)."""
        return self.b.gep(self.workspace, [I64(self.plan.scratch[id(op)])], inbounds=True)

    def storage_type(self, dtype: str):
        return {"f64": self.float, "i64": I64, "bool": I8}[dtype]

    def bind(self, value: Value, pointer):
        """Give a value storage outside the workspace (params, inputs, or another value's storage)."""
        target = self.storage_type(value.type.dtype).as_pointer()
        if pointer.type == target:  # llvmlite would drop a no-op bitcast: callers name such pointers
            self._pointers[value.id] = pointer
        else:
            self._pointers[value.id] = self.b.bitcast(pointer, target, name=llvm_name(value.hint))

    def bind_view(self, value: Value, source: Value, offset):
        """`value` is `source`'s storage from element `offset` on."""
        self._pointers[value.id] = self.b.gep(self.pointer(source), [offset], inbounds=True, name=llvm_name(value.hint))

    def pointer(self, value: Value):
        return self.lane_pointer(value, self.local)

    def lane_pointer(self, value: Value, local):
        """The storage of `value` for lane `local` (ignored for a value every lane shares)."""
        vid = self.plan.owner(value)
        if vid in self.registers:  # (a stack slot of its own, which LLVM makes a register)
            if vid not in self._pointers:
                self._pointers[vid] = self.alloca(self.storage_type(value.type.dtype), llvm_name(value.hint))
            return self._pointers[vid]
        if vid in self.lane_inputs or vid in self.plan.batched:
            # Computed once per basic block: straight-line code reads a value's lane element by
            # element, and every read would otherwise repeat the multiply and the offset. Valid
            # while the value's base pointer (a view's is bound anew) and the lane are the same.
            known = _known(local)
            key = (vid, ("lane", known) if known is not None else ("register", id(local)))
            base = self.lane_inputs[vid][0] if vid in self.lane_inputs else self._pointers.get(vid)
            found = self._lane_pointers.get(key)
            if (found is not None and found[0] is self.b.block and found[1] is base
                    and (known is not None or found[2] is local)):
                return found[3]
            pointer = self._lane_pointer(value, vid, local)
            self._lane_pointers[key] = (self.b.block, base, local, pointer)
            return pointer
        return self._lane_pointer(value, vid, local)

    def _lane_pointer(self, value: Value, vid: int, local):
        element = self.storage_type(value.type.dtype)
        if vid in self.lane_inputs:
            base, stride = self.lane_inputs[vid]
            at = self.b.gep(base, [self.b.mul(local, stride)], inbounds=True)
            return self.b.bitcast(at, element.as_pointer())
        if vid not in self._pointers:
            if vid in self.plan.offsets:
                raw = self._entry.gep(self.workspace, [I64(self.plan.offsets[vid])], inbounds=True)
                self._pointers[vid] = self._entry.bitcast(raw, element.as_pointer(), name=llvm_name(value.hint))
            else:  # a scalar: a register in disguise (one per lane: a workspace slot, above)
                self._pointers[vid] = self.alloca(element, llvm_name(value.hint))
        if vid not in self.plan.batched:
            return self._pointers[vid]
        assert local is not None, f"lane value {value.hint} read outside a lane"
        stride = self.plan.lane_stride.get(vid, element_bytes(element)) // element_bytes(element)
        return self.b.gep(self._pointers[vid], [self.b.mul(local, I64(stride))], inbounds=True)

    def lane_layout(self, value: Value):
        """(the storage of `value` for lane 0, bytes from one lane's storage to the next: an i64,
        0 for a value every lane shares)."""
        vid = self.plan.owner(value)
        pointer = self.lane_pointer(value, I64(0))
        if vid in self.lane_inputs:
            return pointer, self.lane_inputs[vid][1]
        if vid in self.plan.batched:
            element = self.storage_type(value.type.dtype)
            return pointer, I64(self.plan.lane_stride.get(vid, element_bytes(element)))
        return pointer, I64(0)

    def shared(self, value: Value) -> bool:
        """Whether every lane sees the same storage for `value` (a param, a running sum)."""
        vid = self.plan.owner(value)
        return vid not in self.plan.batched and vid not in self.lane_inputs

    def load(self, value: Value, index=None):
        if value.id in self.constants:
            return self.constants[value.id]
        pointer = self.pointer(value)
        if index is not None and value.type.rank:
            pointer = self.b.gep(pointer, [index], inbounds=True)
        loaded = self.b.load(pointer)
        return self.b.trunc(loaded, I1) if value.type.dtype == "bool" else loaded

    def store(self, value: Value, index, result):
        pointer = self.pointer(value)
        if index is not None and value.type.rank:
            pointer = self.b.gep(pointer, [index], inbounds=True)
        if value.type.dtype == "bool":
            result = self.b.zext(result, I8)
        self.b.store(result, pointer)

    def copy(self, source: Value, target: Value, target_offset=None):
        """Copy all of `source` into `target` (at element `target_offset`, for stacking rows)."""
        if target_offset is None and self.plan.owner(source) == self.plan.owner(target):
            return
        if source.type.rank == 0:
            index = target_offset if target_offset is not None else None
            self.store(target, index, self.load(source))
            return
        for j in self.each(source.type.size, "copy"):
            at = self.b.add(target_offset, j) if target_offset is not None else j
            self.store(target, at, self.load(source, j))

    # ---- control flow -----------------------------------------------------------------

    @contextmanager
    def loop(self, count, name: str = "i", start=0, over_lanes: bool = False):
        """A counted loop `for i in start..start+count`; yields the index (an i64 register). A loop
        `over_lanes` is never vectorised across its lanes (`_not_vectorised`).

        LLVM shape, already rotated: pre(start < end ? body : exit; no test for a known positive
        count) -> body(phi i) ... -> latch(i + 1 < end ? body : exit); exit. LLVM's LoopRotate would
        make this shape of the head-tested loop, and its time grows with the function's size for
        every loop it rotates: a 64-layer MLP's kernel spent 2.9 s of its 13 s of passes there."""
        b = self.b
        name = llvm_name(name)
        start = I64(start) if isinstance(start, int) else start
        end = b.add(start, I64(count)) if not isinstance(count, ir.Value) else b.add(start, count)
        pre = b.block
        body = b.append_basic_block(f"{name}.body")
        exit_ = b.append_basic_block(f"{name}.exit")
        if isinstance(count, int) and count > 0:
            b.branch(body)
        else:
            b.cbranch(b.icmp_signed("<", start, end), body, exit_)
        b.position_at_end(body)
        index = b.phi(I64, name=name)
        index.add_incoming(start, pre)
        yield index
        following = b.add(index, I64(1), name=f"{name}.next")
        index.add_incoming(following, b.block)
        latch = b.cbranch(b.icmp_signed("<", following, end), body, exit_)
        if over_lanes:
            latch.set_metadata("llvm.loop", _not_vectorised(b.module))
        b.position_at_end(exit_)

    def each(self, count, name: str = "j", start=0):
        """The indices start..start+count, for a body that does not depend on being in a loop: a
        loop, or, for a known count that `straight_line` allows, the body once per index. LLVM's
        loop passes and vectoriser cost time per loop, and a program of small vectors has hundreds
        of loops of two to four trips (a fuzzer's grad kernel: 351), which then cost more to
        compile than to run: straight-line, the fuzzer's kernels optimise in 26% less time."""
        if isinstance(count, int) and isinstance(start, int) and straight_line(count):
            for k in range(count):
                yield I64(start + k)
        else:
            with self.loop(count, name, start) as index:
                yield index

    def indices(self, shape: tuple[int, ...], name: str = "i"):
        """Every multi-index of `shape` (row-major), as `each`: straight-line when `straight_line`
        allows its count of entries, else nested loops."""
        if straight_line(math.prod(shape)):
            for index in itertools.product(*(range(n) for n in shape)):
                yield [I64(k) for k in index]
            return
        with self.nest(shape, name) as index:
            yield index

    @contextmanager
    def nest(self, shape: tuple[int, ...], name: str = "i"):
        """Loops over every multi-index of `shape` (row-major); yields the list of indices."""
        if not shape:
            yield []
            return
        with self.loop(shape[0], f"{name}0") as first:
            with self.nest(shape[1:], name) as rest:
                yield [first, *rest]

    def linear(self, indices, strides) -> ir.Value:
        offset = I64(0)
        for index, stride in zip(indices, strides):
            if stride:
                offset = self.b.add(offset, self.b.mul(index, I64(stride)))
        return offset

    def check(self, ok, message: str, loc: Loc, value):
        """Fail the kernel with `message` (formatted with `value`) unless `ok` holds."""
        self.checks.append(Check(message, loc))
        check_id = len(self.checks)
        fail = self.b.append_basic_block(f"check{check_id}.fail")
        cont = self.b.append_basic_block(f"check{check_id}.ok")
        self.b.cbranch(ok, cont, fail)
        self.b.position_at_end(fail)
        self.b.store(I64(check_id), self.status)
        self.b.store(value, self.b.gep(self.status, [I64(1)]))
        self.b.store(self.sample if self.names_sample else I64(-1), self.b.gep(self.status, [I64(2)]))
        self.b.ret(I64(check_id))
        self.b.position_at_end(cont)

    # ---- blocks and region ops --------------------------------------------------------------

    def block(self, block: Block):
        for op in block.ops:
            self._op(op)

    def _op(self, op: Op):
        if op.kind in ("loop", "tabulate"):
            self._counted(op, lanes=False)
        elif op.kind == "cond":
            self._cond(op)
        else:
            EMITTERS[op.kind](self, op)

    # ---- lanes ----------------------------------------------------------------------------------

    @contextmanager
    def samples(self):
        """for each lane of the block: the lane's sample is the current one."""
        outer = self.local, self.sample
        with self.loop(self.count, "lane", over_lanes=True) as local:
            self.local, self.sample = local, self.b.add(self.first, local, name="sample")
            try:
                yield local
            finally:
                self.local, self.sample = outer

    def lane_block(self, block: Block):
        """Run `block` over the block's lanes (see the module's docstring): each of its runs
        (spadc/backend/memory.py, `lane_runs`) in one loop over the lanes, sample by sample."""
        from . import outline  # (it builds on this module)
        runs = {id(run[0]): run for run in lane_runs(block, self.shared)}
        in_run = {id(op) for run in runs.values() for op in run}
        readers = outline.block_readers(block) if runs else None
        for op in block.ops:
            if id(op) in runs:
                if not outline.emit_run(self, runs[id(op)], block, readers):
                    with self.samples():
                        self._run(runs[id(op)])
            elif op.kind in ("loop", "tabulate"):
                self._counted(op, lanes=True)
            elif op.kind == "cond" and runs_over_lanes(op):
                self._cond(op, lanes=True)
            elif id(op) not in in_run:
                scratch = self.plan.scratch.get(id(op))
                lane_ops.emit(self, op, None if scratch is None else self.b.gep(self.workspace, [I64(scratch)]))

    def _run(self, run: list[Op]):
        """A run's ops for the current lane; consecutive elementwise ops of one size in one loop
        (`fused_groups`: the memory plan keeps the storages of such a group apart, which fusing needs)."""
        for group in fused_groups(run):
            if len(group) > 1:
                elementwise_group(self, group)
            else:
                self._op(group[0])

    def _counted(self, op: Op, lanes: bool):
        """A loop or a comprehension: for t in lo..hi (reversed: hi-1 down to lo): the body; row t-lo
        of each stacked result <- its yield; a loop's carried params <- its first yields. With
        `lanes`, once for all the block's lanes: the body op by op (`lane_block`), the copies lane
        by lane."""
        (body,) = op.regions
        lo, hi = op.attrs["lo"], op.attrs["hi"]
        n = len(op.args) if op.kind == "loop" else 0
        each_lane = self.samples if lanes else nullcontext
        with each_lane():
            for arg, param in zip(op.args, body.params[1:]):
                self.copy(arg, param)
        if hi <= lo:
            return
        codes = self._codes(op)
        with self.loop(hi - lo, op.attrs["var"]) as j:
            t = self.b.sub(I64(hi - 1), j) if op.attrs.get("reverse") else self.b.add(I64(lo), j)
            row = self.b.sub(t, I64(lo))
            flat_row = row
            if codes is not None:  # a coded loop (spadc/ir/core.py): its index and flat row from its codes
                t = self.b.load(self.b.gep(codes, [j], inbounds=True), name="code")
                flat_row = self.b.sdiv(t, I64(op.attrs["codes"][0]))
            self.store(body.params[0], None, t)
            with self._nested_iteration(flat_iteration(op), flat_row):
                (self.lane_block if lanes else self.block)(body)
            with each_lane():
                for value, kept in zip(body.yields[n:], op.results[n:]):
                    self.copy(value, kept, self.b.mul(row, I64(value.type.size)))
                if n:
                    self._carry(op, body.yields[:n], body.params[1:])
            if id(op) in self.tape_bytes:  # bytes kept per iteration and sample
                counter = self.options["stored"]
                kept = self.b.mul(self.count, I64(self.tape_bytes[id(op)])) if lanes else I64(self.tape_bytes[id(op)])
                self.b.store(self.b.add(self.b.load(counter), kept), counter)

    def _codes(self, op: Op):
        """A coded loop's codes as a constant array of the module (a pointer to its first), else None.
        Written as one byte string, which the IR text and LLVM hold as one constant, not one an entry."""
        if "codes" not in op.attrs:
            return None
        values = op.attrs["codes"][1]
        data = bytearray(struct.pack(f"<{len(values)}q", *values))
        array = ir.ArrayType(I8, len(data))
        module = self.b.module
        codes = ir.GlobalVariable(module, array, module.get_unique_name("codes"))
        codes.initializer = ir.Constant(array, data)
        codes.global_constant = True
        codes.linkage = "private"
        codes.align = 8
        return self.b.bitcast(codes, I64.as_pointer())

    @contextmanager
    def _nested_iteration(self, flat: tuple[int, int, int], position):
        """Inside a loop at `position` (0-based): flat = flat * multiplier + offset + position * stride."""
        multiplier, stride, offset = flat
        outer = self.iteration
        step = position if stride == 1 else self.b.mul(position, I64(stride))
        start = self.b.mul(outer, I64(multiplier)) if offset == 0 else self.b.add(self.b.mul(outer, I64(multiplier)), I64(offset))
        self.iteration = self.b.add(start, step, name="iteration")
        try:
            yield
        finally:
            self.iteration = outer

    def _carry(self, op: Op, yields, params):
        """params <- yields; through the plan's staging slots when one yield is another carried param."""
        staging = self.plan.staging.get(id(op))
        if staging is None:
            for value, param in zip(yields, params):
                self.copy(value, param)
            return
        staged = []
        for value, offset in zip(yields, staging):
            temp = Value(value.type, value.hint)
            element = self.storage_type(value.type.dtype)
            if offset is None:  # a scalar: a register
                self._pointers[temp.id] = self.alloca(element, "staged")
            else:
                raw = self._entry.gep(self.workspace, [I64(offset)], inbounds=True)
                self._pointers[temp.id] = self._entry.bitcast(raw, element.as_pointer(), name="staged")
            self.copy(value, temp)
            staged.append(temp)
        for temp, param in zip(staged, params):
            self.copy(temp, param)

    def _cond(self, op: Op, lanes: bool = False):
        """br c, then, else; each branch copies its yields into the results. With `lanes`, a uniform
        cond, once for all the block's lanes: the condition is lane 0's (every lane's is the same),
        the branches op by op (`lane_block`), the copies lane by lane."""
        if lanes:
            local, self.local = self.local, I64(0)
            condition = self.load(op.args[0])
            self.local = local
        else:
            condition = self.load(op.args[0])
        with self.b.if_else(condition) as (then, otherwise):
            for branch, region in ((then, op.regions[0]), (otherwise, op.regions[1])):
                with branch:
                    (self.lane_block if lanes else self.block)(region)
                    with self.samples() if lanes else nullcontext():
                        for value, result in zip(region.yields, op.results):
                            self.copy(value, result)
