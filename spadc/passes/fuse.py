"""Fusion of `add(acc, outer(a, b))` into `outer_add(acc, a, b)`.

Weight gradients of matrix-vector products are outer products summed into an accumulator; fused,
each is one pass over the matrix, in place, instead of a temporary matrix written and read again.
The `outer` must have no other use, in its block or in regions nested in it.
"""

from __future__ import annotations

from collections import Counter

from ..ir.core import Block, Op, Program


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
        ops.append(Op(op.kind, op.args, op.results, op.attrs, op.loc, op.inlined_at, regions) if regions else op)
    return Block(list(block.params), [op for op in ops if not (op.kind == "outer" and op.result.id in fused_outers)],
                 list(block.yields))
