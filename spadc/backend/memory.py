"""Static memory planning: where each tensor value lives in the kernel's workspace.

Shapes and trip counts are static, so every tensor gets a fixed byte offset in one workspace
buffer whose size is known at compile time (the caller allocates it; generated code never calls an
allocator). Scalars live in registers and need no slot.

Invariants:
- The program's own params and inputs live in the caller's buffers, never in the workspace.
- A loop's final carried values share the storage of its body's carried parameters.
- An elementwise op, or `index_add`, writes in place over an operand of the same type when that
  operand dies at the op and belongs to the op's own block: each output entry depends only on the
  same entry of its operands, so reading and writing one buffer is safe. This makes accumulating
  adjoints in loops O(1) per update instead of a copy of the whole accumulator.
- Every slot is aligned to 64 bytes.
- A plan larger than the memory limit is refused before any code is emitted, with the place of
  the op whose result takes the most of it (for a long loop, its tape).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spadrt import limits
from spadrt.limits import format_bytes

from ..ad.tape import value_bytes
from ..errors import SpadcError
from ..ir import primitives
from ..ir.core import Block, Program, Value, walk_ops

ALIGN = 64
_IN_PLACE_FAMILIES = ("unary", "binary", "select")


@dataclass
class MemoryPlan:
    offsets: dict[int, int] = field(default_factory=dict)  # value id -> byte offset (tensors with own storage)
    shared: dict[int, int] = field(default_factory=dict)  # value id -> id of the value whose storage it uses
    size: int = 0

    def owner(self, value: Value) -> int:
        vid = value.id
        while vid in self.shared:
            vid = self.shared[vid]
        return vid


def element_size(dtype: str, float_bytes: int) -> int:
    return {"f64": float_bytes, "i64": 8, "bool": 1}[dtype]


def plan(program: Program, float_bytes: int = 8, writable: frozenset[int] = frozenset()) -> MemoryPlan:
    """`writable`: ids of the program's own parameters whose caller buffers may be updated in place
    (the running gradient sums of an accumulating gradient program)."""
    result = MemoryPlan()
    external = {v.id for v in program.body.params}
    # The kernel reads the loss and the outputs after the body: they live to its end, like yields.
    body = Block(program.body.params, program.body.ops, [program.loss, *program.outputs.values()])
    _plan_block(body, result, external, float_bytes, set(writable))
    return result


def check_limit(program: Program, plan_: MemoryPlan, max_memory: int | None, kernel: str, float_bytes: int):
    """Refuse a workspace above the memory limit, naming the biggest allocation's op."""
    limit = limits.max_memory(max_memory)
    if plan_.size <= limit:
        return
    sized = [(value_bytes(r, float_bytes), op) for op in walk_ops(program.body) for r in op.results
             if r.id in plan_.offsets]
    biggest, op = max(sized, key=lambda pair: pair[0])
    what = f"a loop's tape ({op.attrs['hi'] - op.attrs['lo']:,} iterations)" if op.kind == "loop" else f"`{op.kind}`"
    raise SpadcError(f"the {kernel} needs a workspace of {format_bytes(plan_.size)}, "
                     f"{format_bytes(biggest)} of it for {what} here: more than {limits.limit_text(limit)}. "
                     f"Shorten the loop or shrink the values it keeps, or use an estimator that keeps less "
                     f"(RAD or SPAD with a small keep)", op.loc)



def _allocate(value: Value, plan_: MemoryPlan, float_bytes: int):
    if value.type.rank == 0:
        return
    plan_.offsets[value.id] = plan_.size
    size = value.type.size * element_size(value.type.dtype, float_bytes)
    plan_.size += (size + ALIGN - 1) // ALIGN * ALIGN


def _plan_block(block: Block, plan_: MemoryPlan, external: set[int], float_bytes: int, writable=frozenset()):
    owned = ({p.id for p in block.params} - external) | set(writable)
    last_use = _last_uses(block)
    for param in block.params:
        if param.id not in external:
            _allocate(param, plan_, float_bytes)
    for position, op in enumerate(block.ops):
        for region in op.regions:
            _plan_block(region, plan_, external, float_bytes)
        if op.kind == "loop":
            (body,) = op.regions
            n = len(op.args)
            for result, param in zip(op.results[:n], body.params[1:]):
                plan_.shared[result.id] = param.id
            for result in op.results[n:]:
                _allocate(result, plan_, float_bytes)
        else:
            for result in op.results:
                donor = _in_place_donor(op, result, owned, last_use, position) if result.type.rank else None
                if donor is not None:
                    plan_.shared[result.id] = donor.id
                else:
                    _allocate(result, plan_, float_bytes)
        owned.update(r.id for r in op.results)


def _in_place_donor(op, result: Value, owned: set[int], last_use: dict[int, int], position: int) -> Value | None:
    if op.kind in ("index_add", "outer_add"):  # they update their first operand entry by entry
        candidates = op.args[:1]
    elif op.kind in primitives.PRIMITIVES and primitives.PRIMITIVES[op.kind].family in _IN_PLACE_FAMILIES:
        candidates = op.args
    else:
        return None
    for arg in candidates:
        if arg.type == result.type and arg.id in owned and last_use.get(arg.id, -1) == position:
            return arg
    return None


def _last_uses(block: Block) -> dict[int, int]:
    """For each value used in `block`, the position of its last use (uses in nested regions count at
    the region op; yields count after the last op)."""
    last: dict[int, int] = {}
    for position, op in enumerate(block.ops):
        for vid in _uses(op):
            last[vid] = position
    for value in block.yields:
        last[value.id] = len(block.ops)
    return last


def _uses(op) -> set[int]:
    used = {a.id for a in op.args}
    for region in op.regions:
        for inner in region.ops:
            used |= _uses(inner)
        used |= {v.id for v in region.yields}
    return used
