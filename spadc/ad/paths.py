"""Which params have a path to the loss crossing more than one random factor (ESTIMATORS.md section 2).

Dynamic programming over the value graph, never listing paths: `most[v]` is the largest number of
gated edges on any path from v to the loss, capped at 2 (all a warning needs; the cap also makes
loops, whose carried values form cycles, converge).

Invariants:
- An edge `operand k -> result` is gated when the policy has a site there; a comprehension site
  gates the edge from its element to its result. Loop-carried values connect each iteration's
  yield to the next iteration's parameter, so a path may cross a loop's sites more than once.
"""

from __future__ import annotations

import os

from ..ir.core import Block, Program

CAP = 2


def multi_factor_paths(program: Program, entries) -> list[tuple[str, list[str]]]:
    gated = {(id(e.site.op), e.site.operand): e.site for e in entries}
    edges: list[tuple[int, int, object]] = []  # (from value id, to value id, site or None)

    def link(source, target, site=None):
        edges.append((source.id, target.id, site))

    def visit(block: Block):
        for op in block.ops:
            for region in op.regions:
                visit(region)
            if op.kind == "loop":
                (body,) = op.regions
                for k in range(len(op.args)):
                    link(op.args[k], body.params[1 + k])
                    link(body.yields[k], body.params[1 + k])
                    link(body.yields[k], op.results[k])
            elif op.kind == "tabulate":
                link(op.regions[0].yields[0], op.results[0], gated.get((id(op), -1)))
            elif op.kind == "cond":
                for region in op.regions:
                    link(region.yields[0], op.results[0])
            else:
                for k, arg in enumerate(op.args):
                    link(arg, op.result, gated.get((id(op), k)))

    visit(program.body)
    most = {program.loss.id: 0}
    step: dict[int, tuple[int, object]] = {}  # value id -> (next value id, site crossed) on a best path
    changed = True
    while changed:
        changed = False
        for source, target, site in edges:
            if target not in most:
                continue
            candidate = min(CAP, most[target] + (site is not None))
            if candidate > most.get(source, -1):
                most[source] = candidate
                step[source] = (target, site)
                changed = True
    found = []
    for decl in program.params:
        if most.get(decl.value.id, 0) >= CAP:
            found.append((decl.name, _sites_on_path(decl.value.id, step)))
    return found


def _sites_on_path(start: int, step) -> list[str]:
    sites, seen, at = [], set(), start
    while at in step and at not in seen:
        seen.add(at)
        at, site = step[at]
        if site is not None:
            where = f"{os.path.basename(site.loc.source.name)}:{site.loc.line}:{site.loc.col}"
            sites.append(f"{site.describe()} at {where}")
    return sites
