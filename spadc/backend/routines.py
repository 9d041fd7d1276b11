"""Matrix products as functions of their own: each (product, element type, shape, lane count)
emitted once per module and called wherever such a product is, one sample or a block of lanes.

Why: a product's register-tiled code (spadc/backend/gemm.py) is hundreds of LLVM instructions,
and LLVM's O3 time grows faster than a function's size. Inline, a 64-wide MLP's gradient kernel
was 78% products (8 layers: 6,232 of its 8,026 lines) and its compile time grew with depth as
depth^1.3; called, the same-shaped layers of a network share three routines, optimised once,
and the kernel itself keeps only the calls.

Invariants:
- A routine runs the emitter's own code (gemm.py), so a product's bits do not depend on whether
  it was called or inline, nor on where it is called from.
- Each operand is passed as (its storage for lane 0, bytes from one lane's storage to the
  next): 0 for an operand every lane shares, and for the one-sample products. A product of a large
  matrix over lanes also gets scratch to pack into (`gemm.pack_bytes`, planned in the kernel's
  workspace): a routine of its own, named `.packed`.
- A routine for a known lane count (1: the one-sample products) is made for that count, so its
  tiles are the one-sample shapes; a block of lanes passes its count.
- Routines are `internal` and `noinline`: inlined back, they would cost LLVM what they save.
"""

from __future__ import annotations

from llvmlite import ir

from . import gemm

I8, I64 = ir.IntType(8), ir.IntType(64)
BYTES = I8.as_pointer()

# name -> (the gemm emitter, whose shape its two dims are): the emitter's arguments are
# (e, first, second, result, dim0, dim1, count, at(operand, lane) -> pointer).
PRODUCTS = {"matvec": (gemm.matvec_over, 0), "vecmat": (gemm.vecmat_over, 1), "outer_sum": (gemm.outer_sum_over, 2),
            "matmul": (gemm.matmul_over, None)}


def call(e, product: str, operands, count, lanes: bool, scratch=None):
    """`product` on `operands` (Values, in the gemm emitter's order) for `count` lanes (an int,
    or an i64 register); with `lanes`, each operand at the current block's lanes
    (`e.lane_layout`), else at the current sample. `scratch`: workspace to pack operands into
    (`gemm.pack_bytes` of it), or None."""
    layouts = [e.lane_layout(value) if lanes else (e.pointer(value), I64(0)) for value in operands]
    invoke(e, product, operands[PRODUCTS[product][1]].type.shape, layouts, count, scratch)


def invoke(e, product: str, dims: tuple, layouts, count, scratch=None):
    """`product` of shape `dims` (see PRODUCTS) on operands given as (storage for lane 0, bytes
    between lanes) for `count` lanes."""
    arguments = []
    for pointer, stride in layouts:
        arguments += [e.b.bitcast(pointer, BYTES), stride]
    if not isinstance(count, int):
        arguments.append(count)
    if scratch is not None:
        arguments.append(e.b.bitcast(scratch, BYTES))
    e.b.call(_routine(e, product, tuple(dims), count, scratch is not None), arguments)


def _routine(e, product: str, dims: tuple, count, packs: bool) -> ir.Function:
    module = e.b.module
    emitter, _ = PRODUCTS[product]
    name = (f"spadc.{product}.{e.float}.{'x'.join(map(str, dims))}.{count if isinstance(count, int) else 'n'}"
            f"{'.packed' if packs else ''}")
    try:
        return module.get_global(name)
    except KeyError:
        pass
    parameters = [BYTES, I64] * 3 + ([] if isinstance(count, int) else [I64]) + ([BYTES] if packs else [])
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), parameters), name=name)
    function.linkage = "internal"
    function.attributes.add("noinline")
    function.attributes.add("nounwind")
    # The routine's own emitter (of the caller's class: codegen imports this module), with no
    # workspace: a product keeps its partial sums in registers (and packs into the scratch passed).
    r = type(e)(function, e.float, plan=None, workspace=None, status=None, checks=[])
    bases = function.args[0:6:2]
    if product == "matmul":  # its result is never its operand's storage (memory.py: not done in place)
        for base in bases:
            base.add_attribute("noalias")
    if packs:  # the routine's own scratch, apart from its operands
        function.args[-1].add_attribute("noalias")
    strides = function.args[1:6:2]
    lane_count = count if isinstance(count, int) else function.args[6]
    element = e.float.as_pointer()

    def at(key: int, s):
        return r.b.bitcast(r.b.gep(bases[key], [r.b.mul(s, strides[key])], inbounds=True), element)

    emitter(r, 0, 1, 2, *dims, lane_count, at, **({"scratch": function.args[-1]} if packs else {}))
    r.b.ret_void()
    r.finish_entry()
    return function


# ---- the one-sample emitters (spadc/backend/emitters.py); over lanes: spadc/backend/lane_ops.py --

def matvec(e, op):
    call(e, "matvec", [*op.args, op.result], 1, lanes=False)


def vecmat(e, op):
    call(e, "vecmat", [*op.args, op.result], 1, lanes=False)


def matmul(e, op):
    """A matrix-matrix product of one sample (m x k times k x n: the routine's three dims)."""
    (m, k_dim), n = op.args[0].type.shape, op.args[1].type.shape[1]
    invoke(e, "matmul", (m, k_dim, n), [(e.pointer(value), I64(0)) for value in (*op.args, op.result)], 1)


def outer_sum(e, op):
    acc, g, x = op.args
    e.copy(acc, op.result)
    call(e, "outer_sum", [g, x, op.result], 1, lanes=False)
