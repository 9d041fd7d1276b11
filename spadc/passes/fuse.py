"""Fusion of `add(acc, outer(a, b))` into `outer_add(acc, a, b)`, of `index_add(acc, outer(a, b),
i...)` into `outer_add_at(acc, a, b, i...)` where acc[i...] is one contiguous run (a stacked
weight's slice, `W.adj[l]`), and of `outer_add(acc, a, gate_unpack(p))` into
`gate_outer_add(acc, a, p)`, and of `conv_weight_grad(gate_unpack(p), g)` into
`gate_conv_weight_grad(p, g)`.

Weight gradients of matrix-vector products are outer products summed into an accumulator; fused,
each is one pass over the matrix, in place, instead of a temporary matrix written and read again.
A sampled one then touches only the kept columns, and the dense stand-in of the gated residual is
never made. The fused-away value must have no other use, in its block or in regions nested in it.
"""

from __future__ import annotations

from collections import Counter

from ..ir.core import Block, Op, Program
from ..ir.structure import contiguous


def fuse_outer_accumulation(program: Program) -> Program:
    uses = Counter()
    _count_uses(program.body, uses)
    for value in (program.loss, *program.outputs.values()):
        uses[value.id] += 1
    return program.with_body(_fuse(program.body, uses), program.outputs, program.loss, program.classifier)


def _count_uses(block: Block, uses: Counter):
    for op in block.ops:
        for arg in op.args:
            uses[arg.id] += 1
        for region in op.regions:
            _count_uses(region, uses)
    for value in block.yields:
        uses[value.id] += 1


def _fuse(block: Block, uses: Counter) -> Block:
    outers = {op.result.id: op for op in block.ops if op.kind == "outer" and uses[op.result.id] == 1}
    fused_outers = set()
    ops = []
    for op in block.ops:
        regions = tuple(_fuse(region, uses) for region in op.regions)
        if op.kind == "add" and op.result.type.rank == 2:
            for position in (1, 0):
                source = outers.get(op.args[position].id)
                if source is not None and op.args[1 - position].type == op.result.type:
                    fused_outers.add(source.result.id)
                    ops.append(Op("outer_add", (op.args[1 - position], *source.args), op.results, {}, op.loc,
                                  op.inlined_at))
                    break
            else:
                ops.append(op)
            continue
        if op.kind == "index_add" and op.args[1].id in outers and contiguous(op.attrs["spec"], op.result.type.shape):
            source = outers[op.args[1].id]
            fused_outers.add(source.result.id)
            ops.append(Op("outer_add_at", (op.args[0], *source.args, *op.args[2:]), op.results,
                          {"spec": op.attrs["spec"]}, op.loc, op.inlined_at))
            continue
        ops.append(Op(op.kind, op.args, op.results, op.attrs, op.loc, op.inlined_at, regions) if regions else op)
    ops = [op for op in ops if not (op.kind == "outer" and op.result.id in fused_outers)]
    return Block(list(block.params), _fuse_gated(ops, uses), list(block.yields))


SPARSE_SHARE: float | None = None  # a conv's gated input at most this kept: its weight gradient from the
# kept positions alone (None: `sparse_share()`, by the machine; bench.convnet --rad sweeps it)


def sparse_share() -> float:
    """The share of kept positions up to which adding them one by one beats the tiled weight
    gradient over all of them. On the RAD paper's ConvNet (f64, batch 150, one core; `python -m
    bench.convnet --rad --sparse-share 1`, then 0), RAD's gradient took, the kept positions alone,
    0.78x, 0.88x, 1.16x and 1.66x the exact one's time at keep 0.05, 0.1, 0.25 and 0.5, and tiled
    1.01-1.04x, on Zen 4, whose 32 vector registers make the tiled weight gradient 4 x 4
    (spadc/backend/conv.py); on a Zen 3 (16 registers, 4 x 2 tiles) the two met near 0.25 (0.72x,
    0.82x, 0.98x, 1.30x against 1.00-1.05x)."""
    from ..backend.target import has_wide_vectors
    return 0.15 if has_wide_vectors() else 0.25


def _few_kept(attrs) -> bool:
    """Whether a conv input's gate keeps so few positions that adding them one by one beats the tiled
    weight gradient over all of them (`sparse_share`)."""
    share = attrs["k"] / attrs["d"] if attrs["draw"] == "with_replacement" else attrs["keep"]
    return share <= (sparse_share() if SPARSE_SHARE is None else SPARSE_SHARE)


def _fuse_gated(ops: list[Op], uses: Counter) -> list[Op]:
    unpacks = {op.result.id: op for op in ops if op.kind == "gate_unpack" and uses[op.result.id] == 1}
    fused, result = set(), []
    for op in ops:
        if op.kind == "outer_add" and op.args[2].id in unpacks and len(unpacks[op.args[2].id].attrs["shape"]) == 1:
            source = unpacks[op.args[2].id]
            result.append(Op("gate_outer_add", (op.args[0], op.args[1], source.args[0]), op.results,
                             dict(source.attrs), op.loc, op.inlined_at))
        elif op.kind == "conv_weight_grad" and op.args[0].id in unpacks and _few_kept(unpacks[op.args[0].id].attrs):
            source = unpacks[op.args[0].id]
            result.append(Op("gate_conv_weight_grad", (source.args[0], op.args[1]), op.results,
                             {**source.attrs, **op.attrs}, op.loc, op.inlined_at))
        else:
            result.append(op)
            continue
        fused.add(source.result.id)
    return [op for op in result if not (op.kind == "gate_unpack" and op.result.id in fused)]
