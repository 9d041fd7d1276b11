"""Static memory planning: where each tensor value lives in the kernel's workspace.

Shapes and trip counts are static, so every tensor gets a fixed byte offset in one workspace
buffer whose size is known at compile time (the caller allocates it; generated code never calls an
allocator and keeps no tensor on the stack). Scalars live in registers and need no slot.

The plan is a liveness plan over the kernel's schedule. Ops are numbered in execution order, a
region op's body between the op's start and end (a `cond`'s branches one after the other: only
one runs). A value lives from its definition to its last use; a use inside a region of a value
defined outside it counts at the region op's end (the body runs again and reads it again). So in
a gradient program a forward value the adjoint reads lives until its last adjoint use, and one it
does not read dies in the forward pass, leaving its bytes to later values. Slots are then placed
largest first, each in the tightest gap left by the overlapping ones already placed: two values share
bytes only if their lifetimes do not overlap.

Invariants:
- The program's own params and inputs live in the caller's buffers, never in the workspace.
- A loop's final carried values share the storage of its body's carried parameters, which live
  for the whole loop. Every result of a region op (stacked rows, a branch's value) lives from the
  op's start to at least its end: it is written during the op, even if nothing reads it after.
- An elementwise op, or `index_add`/`index_set`/`outer_add`/`gate_outer_add`, writes in place over an operand of the same type
  when that operand dies at the op and belongs to the op's own block (for a scalar: only a running
  sum's, which then lives in the caller's buffer like a tensor's): each output entry depends
  only on the same entry of its operands, so reading and writing one buffer is safe. This makes
  accumulating adjoints in loops O(1) per update instead of a copy of the whole accumulator.
- A result never shares bytes with an operand it reads, other than such a donor, or than the
  operand of an `index` that is one contiguous run of it: such a view is a pointer into the
  operand, which then lives as long as the view; a view is never written in place.
- A loop whose carried yields would overwrite one another when copied back (`a, b = b, a`) gets
  staging slots in the workspace (`MemoryPlan.staging`), live only while the copy runs.
- Every slot is aligned to 64 bytes.
- With `lanes` L > 1 (a kernel running L samples side by side, spadc/backend/codegen.py), or with
  `lockstep` (a big program's one-lane kernel, run as a lane kernel of one lane: codegen.py
  `in_lockstep`), every value of a *lane block* (the top level, and the bodies of loops and
  comprehensions in it, but not a `cond`'s branches, which run sample by sample, unless the cond
  is `uniform`) has L copies, one per sample, `lane_stride` bytes apart: its slot is L times as
  large; a scalar gets a slot of L elements (so no stack array grows with L). A loop's or a
  comprehension's index is shared by all samples. A value of a lane block is a view only if every
  lane shares it (a slice of a param at a loop's index, `W[l]`:
  spadc/backend/lane_ops.py), its pointer then made once for all lanes; any other view's pointer
  would be made per lane where it is defined, so it is a copy. In a run of ops that goes lane by
  lane (`lane_runs`) over several lanes, every storage alive during the run is alive through all
  of it; with one lane, through each group of fused elementwise ops of the run (`_span`).
- A plan larger than the memory limit is refused before any code is emitted, with the place of
  the op whose result takes the most of it (for a long loop, its tape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from spadrt import limits
from spadrt.limits import format_bytes

from ..ad.forward import is_direction
from ..ad.tape import value_bytes
from ..errors import SpadcError
from ..ir import primitives
from ..ir.core import Block, Op, Program, Value, count_ops, walk_ops
from ..ir.structure import contiguous

ALIGN = 64
_IN_PLACE_FAMILIES = ("unary", "binary", "select")


@dataclass
class MemoryPlan:
    offsets: dict[int, int] = field(default_factory=dict)  # value id -> byte offset (tensors with own storage)
    shared: dict[int, int] = field(default_factory=dict)  # value id -> id of the value whose storage it uses
    staging: dict[int, list[int]] = field(default_factory=dict)  # id(loop op) -> offset per carried yield
    views: dict[int, int] = field(default_factory=dict)  # value id -> id of the value it is a contiguous part of
    size: int = 0  # the peak: bytes the workspace needs
    lanes: int = 1  # samples run side by side
    lockstep: bool = False  # ops run over blocks of lanes (codegen.py `lane_block`), if only of one
    batched: set[int] = field(default_factory=set)  # owner ids with one copy per lane (scalars included)
    lane_stride: dict[int, int] = field(default_factory=dict)  # owner id -> bytes between lanes (slots only)
    sums: frozenset[int] = frozenset()  # ids of the running sums in the caller's buffers (`writable`)
    scratch: dict[int, int] = field(default_factory=dict)  # id(op) -> offset of what a lane op needs while it runs
    sizes: dict[int, int] = field(default_factory=dict)  # value id (as in offsets) or id(op) (as in scratch) -> bytes
    read_after: frozenset[int] = frozenset()  # ids of the values the kernel reads after the body (loss, outputs)

    def owner(self, value: Value) -> int:
        """The value whose storage `value` is (views excepted: they have their own pointer)."""
        return self.owner_of(value.id)

    def owner_of(self, vid: int) -> int:
        while vid in self.shared:
            vid = self.shared[vid]
        return vid

    @cached_property
    def holders(self) -> dict[int, set[int]]:
        """owner id -> the ids of the values whose storage it is (itself included). Read once the
        plan is made (the emitters'; outline.registers)."""
        found = {}
        for vid in self.shared:
            found.setdefault(self.owner_of(vid), set()).add(vid)
        return found

    def storage_of(self, vid: int) -> int:
        """The value whose bytes `vid` lives in, through shares and views."""
        while vid in self.shared or vid in self.views:
            vid = self.shared.get(vid, self.views.get(vid))
        return vid


def element_size(dtype: str, float_bytes: int) -> int:
    return {"f64": float_bytes, "i64": 8, "bool": 1}[dtype]


def slot_bytes(value: Value, float_bytes: int) -> int:
    size = value.type.size * element_size(value.type.dtype, float_bytes)
    return (size + ALIGN - 1) // ALIGN * ALIGN


def plan(program: Program, float_bytes: int = 8, writable: frozenset[int] = frozenset(), lanes: int = 1,
         lockstep: bool = False) -> MemoryPlan:
    """`writable`: ids of the program's own parameters whose caller buffers may be updated in place
    (the running gradient sums of an accumulating gradient program). `lanes`: samples run side by
    side. `lockstep` (implied by lanes > 1): planned for a kernel that runs its ops over blocks of
    lanes (`lane_runs`), even blocks of one (a big program: codegen.py `in_lockstep`)."""
    lockstep = lockstep or lanes > 1
    # The kernel reads the loss and the outputs after the body: they live to its end, like yields; so
    # do a classifier's scores, a hidden output (`_logits`) when no output names them.
    read_after = [program.loss, *program.outputs.values(), *(program.classifier or ())]
    body = Block(program.body.params, program.body.ops, read_after)
    schedule = _Schedule(body)
    result = MemoryPlan(lanes=lanes, lockstep=lockstep, sums=frozenset(writable),
                        read_after=frozenset(v.id for v in read_after))
    external = {v.id for v in program.body.params}
    storage = _Storage(schedule, float_bytes)
    lane_values = _lane_values(body) if lockstep else {}
    storage.lane_scalars = {v.id for values in lane_values.values() for v in values if not v.type.rank}
    common = lane_common(program, writable) if lockstep else frozenset()  # (else: no lane block)
    shared = lambda value: result.storage_of(value.id) in common  # noqa: E731
    _share_block(body, schedule, result, storage, external, set(writable), no_views=set(lane_values), shared=shared)
    _op_scratch(body, schedule, result, storage)
    if lockstep:
        _lane_scratch(body, schedule, result, storage, shared, lanes)
        _span(body, schedule, storage, shared, lanes)
        _widen(lane_values, result, storage, external, lanes)
    _place(storage, result)
    return result


def lane_common(program: Program, writable) -> set[int]:
    """Ids of the values every lane sees one storage of: the params, the running sums (`writable`),
    a product's direction, and the indices of the loops and comprehensions of lane blocks (the
    lanes step through them together)."""
    indices = {op.regions[0].params[0].id for block in lane_blocks(program.body) for op in block.ops
               if op.kind in ("loop", "tabulate")}
    return ({d.value.id for d in program.params} | set(writable)
            | {d.value.id for d in program.inputs if is_direction(d.name)} | indices)


def lane_blocks(body: Block):
    """The blocks that run op by op over the lanes: `body`, and the bodies of loops and
    comprehensions in a lane block, and the branches of a `uniform` cond in one; any other `cond`
    runs sample by sample."""
    yield body
    for op in body.ops:
        if runs_over_lanes(op):
            for region in op.regions:
                yield from lane_blocks(region)


def runs_over_lanes(op: Op) -> bool:
    """A region op of a lane block that runs once for all its lanes: a loop, a comprehension, or a
    `cond` whose condition every sample shares (attr `uniform`: a binomial schedule's, whose
    condition comes from the loop index alone; spadc/ad/binomial.py)."""
    return op.kind in ("loop", "tabulate") or (op.kind == "cond" and op.attrs.get("uniform", False))


def _lane_values(body: Block) -> dict[int, list[Value]]:
    """id(block) -> the values defined in that lane block, indices of loops excepted."""
    found = {}
    for block in lane_blocks(body):
        values = list(block.params) if block is body else []  # a body's own are added with its op
        for op in block.ops:
            if op.kind in ("loop", "tabulate"):
                values.extend(op.regions[0].params[1:])
            values.extend(op.results)
        found[id(block)] = values
    return found


RUN_OPS = 64  # ops (counting those in a `cond`'s branches) beyond which a run is cut in two


def lane_runs(block: Block, shared):
    """The runs of a lane block: sequences of ops that run lane by lane in one loop (not a loop, a
    comprehension, or an op over all lanes, `spadc.backend.lane_ops.takes_lanes`), each cut after
    RUN_OPS ops. A run is emitted as a function of its own (spadc/backend/outline.py), and LLVM's
    loop passes take time that grows with the square of a function's loops: a fuzzer's Hessian
    product, one run of 1,528 ops, spent 7 s of its 15 s compile in the loop vectoriser."""
    from .lane_ops import takes_lanes
    run, size = [], 0
    for op in block.ops:
        if runs_over_lanes(op) or takes_lanes(op, shared):
            if run:
                yield run
            run, size = [], 0
            continue
        weight = 1 + sum(count_ops(region) for region in op.regions)
        if run and size + weight > RUN_OPS:
            yield run
            run, size = [], 0
        run.append(op)
        size += weight
    if run:
        yield run


def _op_scratch(block: Block, schedule: _Schedule, plan_: MemoryPlan, storage: _Storage):
    """Workspace for the ops that work in a scratch copy (`solve`, tiled `conv`), alive while the op runs. (Lanes
    run such an op one after the other: one scratch serves them all.)"""
    for op in walk_ops(block):
        size = op_scratch_bytes(op, storage.float_bytes)
        if size:
            key = -len(storage.sizes) - 1  # scratch keys never collide with value ids (which are >= 0)
            storage.scratch(key, (size + ALIGN - 1) // ALIGN * ALIGN, schedule.start[id(op)])
            plan_.scratch[id(op)] = key


def op_scratch_bytes(op, float_bytes: int) -> int:
    """Workspace an op run lane by lane works in (a copy to factor, a padded input)."""
    from . import conv, linalg
    return linalg.scratch_bytes(op, float_bytes) + conv.scratch_bytes(op, float_bytes)


def _lane_scratch(body: Block, schedule: _Schedule, plan_: MemoryPlan, storage: _Storage, shared, lanes: int):
    from .lane_ops import scratch_bytes, takes_lanes
    for block in lane_blocks(body):
        for op in block.ops:
            size = scratch_bytes(op, lanes, storage.float_bytes) if takes_lanes(op, shared) else 0
            if size:
                key = -len(storage.sizes) - 1  # scratch keys never collide with value ids (which are >= 0)
                storage.scratch(key, (size + ALIGN - 1) // ALIGN * ALIGN, schedule.start[id(op)])
                plan_.scratch[id(op)] = key


def _span(body: Block, schedule: _Schedule, storage: _Storage, shared, lanes: int):
    """Storages that must stay apart beyond their lifetimes. In a run of several lanes, lane 0 runs all
    its ops before lane 1 starts: every storage alive at some point of a run is alive through all of
    it (else lane 0 could overwrite what lane 1 has yet to read). With one lane a run's ops run in
    order, but a group of fused elementwise ops (`emitters.fused_groups`) computes entry by entry:
    every storage alive at some point of the group is alive through all of it (else an op's result
    could overwrite entries a value that died earlier in the group has yet to give its later ones).
    The fuzzer's long profile found wrong jvp, Hessian-product and gradient values when one lane
    spanned neither."""
    from .emitters import fused_groups
    windows = []
    for block in lane_blocks(body):
        for run in lane_runs(block, shared):
            spans = [run] if lanes > 1 else [group for group in fused_groups(run) if len(group) > 1]
            windows += [(schedule.start[id(span[0])], schedule.end[id(span[-1])]) for span in spans]
    intervals = list(storage.intervals.values())  # (as arrays: windows times storages, as in `_place`)
    starts = np.array([interval[0] for interval in intervals], dtype=np.int64)
    ends = np.array([interval[1] for interval in intervals], dtype=np.int64)
    for first, last in windows:
        overlapping = (starts <= last) & (ends >= first)
        np.minimum(starts, first, out=starts, where=overlapping)
        np.maximum(ends, last, out=ends, where=overlapping)
    for interval, start, end in zip(intervals, starts.tolist(), ends.tolist()):
        interval[0], interval[1] = start, end


def _widen(lane_values, plan_: MemoryPlan, storage: _Storage, external: set[int], lanes: int):
    for values in lane_values.values():
        for value in values:
            owner = plan_.storage_of(value.id)
            if owner in external or owner in plan_.batched:
                continue
            plan_.batched.add(owner)
            if owner in storage.sizes:  # (a scalar's lanes are packed: one slot of `lanes` elements)
                plan_.lane_stride[owner] = storage.sizes[owner]
                storage.sizes[owner] = (storage.sizes[owner] * lanes + ALIGN - 1) // ALIGN * ALIGN


def check_limit(program: Program, plan_: MemoryPlan, max_memory: int | None, kernel: str, float_bytes: int):
    """Refuse a workspace above the memory limit, naming the biggest allocation's op."""
    limit = limits.max_memory(max_memory)
    if plan_.size <= limit:
        return
    sized = [(value_bytes(r, float_bytes), op) for op in walk_ops(program.body) for r in op.results
             if r.id in plan_.offsets]
    sized += [(op_scratch_bytes(op, float_bytes), op) for op in walk_ops(program.body) if id(op) in plan_.scratch]
    biggest, op = max(sized, key=lambda pair: pair[0])
    what = f"a loop's tape ({op.attrs['hi'] - op.attrs['lo']:,} iterations)" if op.kind == "loop" else f"`{op.kind}`"
    raise SpadcError(f"the {kernel} needs a workspace of {format_bytes(plan_.size)}, "
                     f"{format_bytes(biggest)} of it for {what} here: more than {limits.limit_text(limit)}. "
                     f"Shorten the loop or shrink the values it keeps, or use an estimator that keeps less "
                     f"(RAD or SPAD with a small keep)", op.loc)


# ---- the schedule: when each value is defined and last used ------------------------------------

class _Schedule:
    """Times in execution order. `start`/`end` per op (equal for plain ops), `block_end` per block
    (when its yields are read), `defined`/`last` per value (uses in nested regions lifted to the
    region op's end)."""

    def __init__(self, program_body: Block):
        self.start: dict[int, int] = {}
        self.end: dict[int, int] = {}
        self.block_end: dict[int, int] = {}
        self.defined: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._level: dict[int, int] = {}
        self._clock = 0
        self._number(program_body)
        self._uses(program_body, [])

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _number(self, block: Block):
        for op in block.ops:
            self.start[id(op)] = self._tick()
            for region in op.regions:
                self._number(region)
            self.end[id(op)] = self._tick() if op.regions else self.start[id(op)]
        self.block_end[id(block)] = self._tick()

    def _uses(self, block: Block, chain: list[Op]):
        level = len(chain)
        for param in block.params:
            self._define(param, self.start[id(chain[-1])] if chain else 0, level)
        for op in block.ops:
            for arg in op.args:
                self._use(arg, self.start[id(op)], level, chain)
            for region in op.regions:
                self._uses(region, chain + [op])
            for value in op.results:
                self._define(value, self.start[id(op)], level)
        for value in block.yields:
            self._use(value, self.block_end[id(block)], level, chain)

    def _define(self, value: Value, time: int, level: int):
        self.defined[value.id] = time
        self.last.setdefault(value.id, time)
        self._level[value.id] = level

    def _use(self, value: Value, time: int, level: int, chain: list[Op]):
        defined_at = self._level.get(value.id, 0)
        if defined_at < level:  # read by every run of the enclosing region: alive until it ends
            time = self.end[id(chain[defined_at])]
        self.last[value.id] = max(self.last.get(value.id, 0), time)


# ---- storage: which values share bytes, and each storage's lifetime -----------------------------

class _Storage:
    def __init__(self, schedule: _Schedule, float_bytes: int):
        self.schedule = schedule
        self.float_bytes = float_bytes
        self.intervals: dict[int, list[int]] = {}  # owner id -> [first, last] time
        self.sizes: dict[int, int] = {}
        self.viewed: dict[int, int] = {}  # owner id -> the last use of any view into its bytes
        self.lane_scalars: set[int] = set()  # ids of scalars with one copy per lane (in the workspace)

    def own(self, value: Value, during: Op | None = None):
        """Give `value` its own bytes; a value written `during` a region op (a loop's carried param,
        copied into at each iteration's end; a stacked or branch result) keeps them to the op's end.
        A scalar has none (a register), unless it has one per lane (`lane_scalars`): its element."""
        if value.type.rank == 0 and value.id not in self.lane_scalars:
            return
        s = self.schedule
        self.sizes[value.id] = slot_bytes(value, self.float_bytes) if value.type.rank else \
            element_size(value.type.dtype, self.float_bytes)
        if during is None:
            self.intervals[value.id] = [s.defined[value.id], s.last[value.id]]
        else:
            self.intervals[value.id] = [s.start[id(during)], max(s.last[value.id], s.end[id(during)])]

    def scratch(self, key: int, size: int, time: int):
        self.sizes[key] = size
        self.intervals[key] = [time, time]

    def extend(self, owner: int, value: Value, during: Op | None = None):
        """`value` shares `owner`'s bytes: they live as long as it does (a carried param: the loop)."""
        interval = self.intervals.get(owner)
        if interval is not None:
            interval[1] = max(interval[1], self.schedule.last[value.id])
            if during is not None:
                interval[1] = max(interval[1], self.schedule.end[id(during)])


def _share_block(block: Block, schedule: _Schedule, plan_: MemoryPlan, storage: _Storage, external: set[int],
                 writable: set[int], loop: Op | None = None, no_views: set[int] = frozenset(), shared=None,
                 branch: tuple[Op, Block] | None = None):
    """`no_views`: ids of lane blocks, whose views (a pointer per lane, made in a run) are copied,
    except a view every lane shares (`shared`: lane_ops.takes_lanes), made once for all lanes.
    `branch`: (a uniform cond, this block, one of its branches), whose loops may take over values
    of the enclosing block (`writable`: those it owns) that only the other branch reads later."""
    from .lane_ops import takes_lanes
    owned = ({p.id for p in block.params} - external) | writable
    for param in block.params:
        if param.id in plan_.shared:  # a carried param in its initial value's storage
            storage.extend(plan_.owner(param), param, loop)
        elif param.id not in external:
            storage.own(param, loop)
    for op in block.ops:
        if op.kind == "loop":
            _carry_in_place(op, owned, schedule, plan_, storage, branch)
        exclusive = op.kind == "cond" and op.attrs.get("uniform", False)
        for region in op.regions:
            _share_block(region, schedule, plan_, storage, external, set(owned) if exclusive else set(),
                         op if op.kind == "loop" else None, no_views, shared, (op, region) if exclusive else None)
        if op.kind == "loop":
            _share_loop(op, schedule, plan_, storage)
        elif op.regions:  # written all through the op (row by row, or at a branch's end): alive to its end
            for result in op.results:
                storage.own(result, op)
        elif is_view(op) and (id(block) not in no_views or takes_lanes(op, shared)):
            plan_.views[op.result.id] = op.args[0].id
            owner = plan_.storage_of(op.args[0].id)
            storage.extend(owner, op.result)
            storage.viewed[owner] = max(storage.viewed.get(owner, 0), schedule.last[op.result.id])
        else:
            for result in op.results:
                donor = _in_place_donor(op, result, owned, schedule, plan_, storage)
                if donor is not None:
                    plan_.shared[result.id] = donor.id
                    storage.extend(plan_.owner(donor), result)
                else:
                    storage.own(result)
        owned.update(r.id for r in op.results)


def _share_loop(op: Op, schedule: _Schedule, plan_: MemoryPlan, storage: _Storage):
    (body,) = op.regions
    n = len(op.args)
    for result, param in zip(op.results[:n], body.params[1:]):
        plan_.shared[result.id] = param.id
        storage.extend(plan_.owner(param), result)
    for result in op.results[n:]:
        storage.own(result, op)  # a stack, written row by row: alive to the loop's end even if never read
    yields, params = body.yields[:n], body.params[1:]
    param_owners = {plan_.storage_of(p.id) for p in params}
    if any(plan_.storage_of(y.id) in param_owners and plan_.storage_of(y.id) != plan_.storage_of(p.id)
           for y, p in zip(yields, params)):  # (a view of a param counts as that param)
        keys = []
        for value in yields:  # scalars stage through a register
            if not value.type.rank:
                keys.append(None)
                continue
            key = -len(storage.sizes) - 1  # scratch keys never collide with value ids (which are >= 0)
            storage.scratch(key, slot_bytes(value, storage.float_bytes), schedule.block_end[id(body)])
            keys.append(key)
        plan_.staging[id(op)] = keys


def is_view(op: Op) -> bool:
    """An `index` whose result is one contiguous run of its operand (`x[t]`, `x[t, 2:5]`, `x[1:3, :]`):
    it needs no bytes of its own, only a pointer into the operand's."""
    # (a slice from a dynamic start is copied: its start is known only at run time)
    return op.kind == "index" and bool(op.result.type.rank) and contiguous(op.attrs["spec"], op.args[0].type.shape)


def _carry_in_place(op: Op, owned: set[int], schedule: _Schedule, plan_: MemoryPlan, storage: _Storage,
                    branch: tuple[Op, Block] | None = None):
    """A carried param takes over the storage of its initial value when that value dies at the
    loop, and no view of it lives on (a gradient accumulator carried by a reversed loop then sums
    in the caller's buffer). In a branch of a uniform cond (`branch`), a value of the enclosing
    block dies at the loop too when nothing after it reads it but the other branch, which does not
    run when this one does: so a running sum that a binomial schedule's actions pass through their
    cond (spadc/ad/binomial.py) still sums in the caller's buffer, lane after lane, as the taped
    loop's does, not in copies of its own per lane."""
    (body,) = op.regions
    taken = set()
    start = schedule.start[id(op)]
    for arg, param in zip(op.args, body.params[1:]):
        owner = plan_.owner(arg)
        dies = schedule.last[arg.id] == start or (branch is not None and _only_elsewhere(arg, op, branch, schedule))
        if ((param.type.rank or owner in plan_.sums) and arg.type == param.type and arg.id in owned and owner not in taken
                and arg.id not in plan_.views and dies
                and storage.viewed.get(plan_.storage_of(arg.id), -1) <= start):
            plan_.shared[param.id] = arg.id
            taken.add(owner)


def _only_elsewhere(value: Value, loop: Op, branch: tuple[Op, Block], schedule: _Schedule) -> bool:
    """Whether `value`, read by `loop` in branch `branch` = (cond, block), is read after the loop
    only by the cond's other branch: not after the cond, nor later in this branch."""
    cond, block = branch
    if schedule.last[value.id] != schedule.end[id(cond)]:
        return False
    later = block.ops[block.ops.index(loop) + 1:]
    return all(value is not y for y in block.yields) and not any(
        value is a for op in later for nested in walk_ops(Block(ops=[op]))
        for a in (*nested.args, *(y for region in nested.regions for y in region.yields)))


def _in_place_donor(op: Op, result: Value, owned: set[int], schedule: _Schedule, plan_: MemoryPlan,
                    storage: _Storage) -> Value | None:
    if op.kind in ("index_add", "index_set", "outer_add", "outer_add_at", "gate_outer_add"):  # they update their first operand entry by entry
        candidates = op.args[:1]
    elif op.kind in primitives.PRIMITIVES and primitives.PRIMITIVES[op.kind].family in _IN_PLACE_FAMILIES:
        candidates = op.args
    else:
        return None
    time = schedule.start[id(op)]
    for arg in candidates:
        if not result.type.rank and plan_.owner(arg) not in plan_.sums:
            continue  # a scalar is a register; only a running sum's is updated where it lives
        if (arg.type == result.type and arg.id in owned and arg.id not in plan_.views
                and schedule.last[arg.id] == time and storage.viewed.get(plan_.storage_of(arg.id), -1) <= time):
            return arg  # and no view reads these bytes later
    return None


# ---- placement: greedy by size, best fit ---------------------------------------------------------

def _place(storage: _Storage, plan_: MemoryPlan):
    """Largest storage first, each at the offset of the smallest gap it fits among the storages
    already placed whose lifetimes overlap its own (the greedy-by-size heuristic of TFLite's arena
    planner: near the live-bytes lower bound on real graphs, where first-fit in time order
    fragments)."""
    order = sorted(storage.intervals, key=lambda k: (-storage.sizes[k], storage.intervals[k][0], k))
    # The storages placed so far, as arrays: a deep network has thousands, each overlapping hundreds
    # (its tape), and a Python scan of them all for each was quadratic (2.5 of 9.5 s of a 300-layer
    # MLP's compile under the profiler).
    placed_offsets, placed_sizes, firsts, lasts = (np.zeros(len(order), dtype=np.int64) for _ in range(4))
    offsets: dict[int, int] = {}
    for n, owner in enumerate(order):
        first, last = storage.intervals[owner]
        size = storage.sizes[owner]
        overlapping = (firsts[:n] <= last) & (lasts[:n] >= first)
        offsets[owner] = _best_fit(placed_offsets[:n][overlapping], placed_sizes[:n][overlapping], size)
        placed_offsets[n], placed_sizes[n], firsts[n], lasts[n] = offsets[owner], size, first, last
    for owner, offset in offsets.items():
        if owner >= 0:
            plan_.offsets[owner] = offset
            plan_.sizes[owner] = storage.sizes[owner]
    for loop_id, keys in plan_.staging.items():
        plan_.staging[loop_id] = [offsets[key] if key is not None else None for key in keys]
    for op_id, key in plan_.scratch.items():
        plan_.scratch[op_id] = offsets[key]
        plan_.sizes[op_id] = storage.sizes[key]
    plan_.size = int((placed_offsets + placed_sizes).max(initial=0))


def _best_fit(other_offsets, other_sizes, size: int) -> int:
    """The offset of the smallest gap of at least `size` bytes between the storages given (offsets
    and sizes), the first of equal gaps in order of offset; else just past them all."""
    order = np.lexsort((other_sizes, other_offsets))
    starts, ends = other_offsets[order], other_offsets[order] + other_sizes[order]
    before = np.maximum.accumulate(np.concatenate(([0], ends)))  # before[k]: the end of all below k
    gaps = starts - before[:-1]
    fits = np.flatnonzero(gaps >= size)
    if fits.size:
        return int(before[fits[np.argmin(gaps[fits])]])
    return int(before[-1])
