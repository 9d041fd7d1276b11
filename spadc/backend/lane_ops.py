"""The ops a lane kernel runs once for all its lanes, rather than lane by lane: one table for the
memory planner (what breaks a run, what scratch an op needs) and the code generator.

- `matmul` of a shared matrix (a param) with each lane's vector, either side: a matrix-matrix
  product (spadc/backend/gemm.py);
- `outer_add` into a running sum: acc += G^T X over the lanes (gemm.py);
- `gate_outer_add` into a running sum, draws with replacement: all lanes' draws sorted by
  column and summed in registers (spadc/backend/gates.py): a sampled weight gradient costs what
  it keeps, plus one pass over the sum per block of lanes;
- an `index` that is a view (spadc/backend/memory.py `is_view`) of a shared value at indices the
  lanes share, needing no run-time check (`W[l]` of a stacked param in a loop over l): one pointer
  for all lanes, so the products that read it are the matrix-matrix ones above.

Invariant: `takes_lanes(op, shared)` depends only on the op and on which values every lane shares,
so the planner and the code generator cut a block into the same runs.
"""

from __future__ import annotations

from . import gates, gemm, routines
from .emitters import outer_add_at_layouts
from .memory import is_view


def takes_lanes(op, shared) -> bool:
    """Whether `op` in a lane block runs once over all lanes; `shared(value)`: whether every lane
    sees the same storage for it (a param, a running sum)."""
    if op.kind == "matmul":
        A, B = op.args
        return (A.type.rank == 2 and B.type.rank == 1 and shared(A)) or (A.type.rank == 1 and B.type.rank == 2
                                                                          and shared(B))
    if op.kind == "outer_add":  # a running sum (not a per-sample value) updated in place
        return shared(op.result) and shared(op.args[0])
    if op.kind == "gate_outer_add":
        return shared(op.result) and shared(op.args[0]) and op.attrs["draw"] == "with_replacement"
    if op.kind == "outer_add_at":  # a stacked weight's gradient: its slice at a shared place, a running sum
        return shared(op.result) and _at_shared_place(op, shared, 3)
    if op.kind == "index" and is_view(op):  # a slice of a shared value at a shared place: W[l] in a loop
        return _at_shared_place(op, shared, 1)
    return False


def _at_shared_place(op, shared, first_index: int) -> bool:
    """Whether `op`'s first operand is shared and its indices (operands from `first_index` on) are
    too, none needing a run-time check (which names a sample)."""
    checked = any(kind == "dyn" and rest[0] for kind, *rest in op.attrs["spec"])
    return shared(op.args[0]) and all(shared(index) for index in op.args[first_index:]) and not checked


def is_product(op, shared) -> bool:
    """An op over all lanes that does the lanes' work at once (a product): what lanes are for. A
    shared view alone gains nothing from them (spadc/backend/kernels.py, choose_lanes)."""
    return op.kind != "index" and takes_lanes(op, shared)


def scratch_bytes(op, lanes: int, float_bytes: int) -> int:
    """Workspace bytes the op needs while it runs (beyond its operands and result)."""
    if op.kind == "gate_outer_add":
        return gates.lane_scratch_bytes(op, lanes, float_bytes)
    if op.kind == "matmul":
        product, dims = _product(op)
        return gemm.pack_bytes(product, dims, lanes, float_bytes)
    if op.kind in ("outer_add", "outer_add_at"):
        return gemm.pack_bytes("outer_sum", op.args[1].type.shape + op.args[2].type.shape, lanes, float_bytes)
    return 0


def _product(op) -> tuple[str, tuple]:
    """(the routine, its dims) of a lane `matmul`."""
    matrix = op.args[0] if op.args[0].type.rank == 2 else op.args[1]
    return ("matvec" if matrix is op.args[0] else "vecmat"), matrix.type.shape


def emit(e, op, scratch=None):
    """Emit `op` (for which `takes_lanes` holds) over the block's lanes; `scratch`: a pointer to its
    scratch bytes."""
    if op.kind == "gate_outer_add":
        gates.lane_outer_add(e, op, scratch)
    elif op.kind == "index":  # a shared view: its pointer, once (spadc/backend/emitters.py)
        e._op(op)
    elif op.kind == "outer_add_at":
        routines.invoke(e, "outer_sum", op.args[1].type.shape + op.args[2].type.shape,
                        outer_add_at_layouts(e, op, lanes=True), e.count, scratch)
    elif op.kind == "outer_add":
        routines.call(e, "outer_sum", [op.args[1], op.args[2], op.result], e.count, lanes=True, scratch=scratch)
    else:
        routines.call(e, _product(op)[0], [*op.args, op.result], e.count, lanes=True, scratch=scratch)
