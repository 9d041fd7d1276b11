"""Sites: the operand edges of IR ops where a path-sampled adjoint draws (ESTIMATORS.md section 2).

A site is one edge `operand k -> result` of one op. Its kind says what its gate acts on:
- `operand`: the adjoint along the edge is linear in another operand (the other side of `*`, `@`,
  `outer`), which is the stored residual; the gate keeps some of its entries (a residual site).
- `partial`: the adjoint is `g * J` with J the edge's elementwise partial (`/`, `^`, `prod`); J is
  computed in the forward pass and the gate keeps some of its entries (a residual site).
- `edge`: the adjoint contribution itself is gated (`+`, `-`, reductions): noise, no memory saved.
- `comprehension`: the cotangent of a comprehension's result is gated, jointly over its entries.

Invariants:
- A param (or a row, slice, element or broadcast of one) is never a stored residual.
- A site's id is stable: it hashes the op's source location, the call sites it was inlined
  through and the operand (spadc.rng.site_id), so reports and random keys survive recompiles.
- Which sites exist depends only on the program and the site policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import rng
from ..ir.core import REGION_OPS, Block, Op, Program

LINEAR_RESIDUAL = ("mul", "matmul", "outer", "conv")
PARTIAL = ("div", "pow", "reduce_prod")
EDGE = ("add", "sub", "reduce_sum", "reduce_max", "reduce_min")
_VIEWS = ("index", "reshape", "broadcast", "transpose")


@dataclass(frozen=True, eq=False)
class Site:
    op: Op
    operand: int  # the gated edge: operand -> result
    kind: str  # operand | partial | edge | comprehension
    id: int
    # The gated tensor as a whole: the per-op tensor stacked over the comprehensions between the
    # site and its draw level (the nearest enclosing `for` body, branch, or the top level).
    shape: tuple[int, ...]
    trips: int  # how many times the site is drawn per sample (iterations of enclosing loops)
    # A conv's input is gated by spatial position (ESTIMATORS.md section 9): an entry is a position
    # with its `channels` values, `shape` counts positions and `value_shape` is the gated tensor's own
    # (None for every other site: an entry is one value of `shape`).
    channels: int = 1
    value_shape: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        """d: the entries a gate draws from."""
        return math.prod(self.shape)

    @property
    def values(self) -> int:
        """The values of the gated tensor as a whole (d times the channels of an entry)."""
        return self.size * self.channels

    @property
    def stored(self) -> int | None:
        """For an `operand` site, the operand whose entries are stored (the residual)."""
        return 1 - self.operand if self.kind == "operand" else None

    @property
    def loc(self):
        return self.op.loc

    def describe(self) -> str:
        what = {"operand": f"residual of `{self.op.kind}`", "partial": f"partial of `{self.op.kind}`",
                "edge": f"edge of `{self.op.kind}`", "comprehension": "comprehension"}[self.kind]
        if self.value_shape is not None:
            what += f" by spatial position ({self.channels} channels each)"
        return f"{what}, operand {self.operand}" if self.kind != "comprehension" else what


def find_sites(program: Program, policy: str, active: set[int]) -> dict[tuple[int, int], Site]:
    """Sites under `policy`, keyed by (id(op), operand); comprehension sites use operand -1."""
    from_params = _param_derived(program)
    varying = _varying(program)
    sites: dict[tuple[int, int], Site] = {}

    enclosing: list[Op] = []  # region ops around the block being visited, outermost first
    ordinals = _ordinals(program.body)

    def add(op: Op, operand: int, kind: str):
        stacks, trips, at_draw_level = [], 1, False
        for outer in reversed(enclosing):
            extent = outer.attrs["hi"] - outer.attrs["lo"] if outer.kind != "cond" else 1
            if outer.kind != "tabulate":
                at_draw_level = True
            if at_draw_level:
                trips *= extent
            else:
                stacks.insert(0, extent)
        shape = tuple(stacks) + _element_shape(op, operand, kind)
        site_id = rng.site_id(op.loc, op.inlined_at, operand, f"{op.kind}.{ordinals[id(op)]}")
        if op.kind == "conv" and operand == 1:  # the input, drawn by position: all its channels at once
            channels = op.args[0].type.shape[0]
            sites[(id(op), operand)] = Site(op, operand, kind, site_id, shape[:len(stacks)] + shape[len(stacks) + 1:],
                                            max(trips, 0), channels, shape)
        else:
            sites[(id(op), operand)] = Site(op, operand, kind, site_id, shape, max(trips, 0))

    def visit(block: Block):
        for op in block.ops:
            enclosing.append(op)
            for region in op.regions:
                visit(region)
            enclosing.pop()
            if op.kind == "tabulate":
                if policy == "edges" and op.results[0].id in active:
                    add(op, -1, "comprehension")
                continue
            if op.kind in REGION_OPS:
                continue
            for k, arg in enumerate(op.args):
                if arg.id not in active:
                    continue
                kind = _site_kind(op, k, policy, from_params, varying)
                if kind is not None:
                    add(op, k, kind)

    visit(program.body)
    return sites


def saving(sites, readers: dict[int, set[int]], taped: set[int], rereadable, active: set[int],
           copies: dict[int, int], kept_share) -> tuple[list[Site], list[tuple[Site, str]]]:
    """(the sites to gate, [(site, why not)] for the others). Gating an operand site saves bytes
    when its stored operand is on the exact tape for its own rule alone. One that another op's
    adjoint reads (`tanh`'s output, a gate) is kept anyway, and one the adjoint recomputes (an
    element of a kept state) is had from what is kept anyway: gating either adds noise and saves
    nothing, so it stays exact (ESTIMATORS.md section 9). An input's row is read again, never kept,
    and is gated all the same so that the noise is RAD's (section 2). `readers` and `taped`: what
    the exact adjoint's rules read and what it keeps (spadc/ad/reverse.py); `rereadable(value)`:
    an input or param, or a row of one. Edge and comprehension sites gate adjoints and keep
    nothing; a partial site is kept when what its op's rule reads is on the tape for that edge
    alone (else the partial is kept beside it). `active`: the values that have adjoints.
    `copies`: value id -> how many copies of it a sample's exact tape holds (`value_copies`). A gate
    draws anew wherever its op runs: inside a loop or comprehension that its residual is defined
    outside of, the draws can keep more than the one exact copy. `kept_share(site)`: the share of a
    site's entries its draws keep (0 when no keep is known: then that comparison gates)."""
    sites = list(sites)
    kept, ungated = [], []
    storing = {}  # value id -> how many operand sites would store it
    for site in sites:
        if site.kind == "operand":
            stored = site.op.args[site.stored].id
            storing[stored] = storing.get(stored, 0) + 1
    for site in sites:
        if site.kind == "partial":  # it keeps the partial instead of what the rule reads for it
            read = [v for v in (*site.op.args, *site.op.results) if id(site.op) in readers.get(v.id, ())]
            if site.size == 1:
                ungated.append((site, "its partial is one number: a draw of it keeps as much"))
            elif any(a.id in active for k, a in enumerate(site.op.args) if k != site.operand):
                ungated.append((site, "the adjoint of its op's other operand reads what its partial replaces"))
            elif any(v.id in taped and readers[v.id] - {id(site.op)} for v in read):
                ungated.append((site, "what its partial is computed from is kept anyway"))
            elif sum(v.type.size * copies[v.id] for v in read if v.id in taped) < _drawn_entries(site, 1.0):
                ungated.append((site, "its partial has more entries than the kept values it replaces"))
            else:
                kept.append(site)
            continue
        stored = site.op.args[site.stored] if site.kind == "operand" else None
        if stored is None or rereadable(stored):
            kept.append(site)
        elif site.size == 1:  # (the site's tensor as a whole: stacked over the comprehensions around it)
            ungated.append((site, "its residual is one number: a draw of it keeps as much"))
        elif storing[stored.id] > 1:
            ungated.append((site, "its residual is stored for another site too: one exact copy costs less"))
        elif readers.get(stored.id, set()) - {id(site.op)}:
            ungated.append((site, "its residual is kept anyway for another adjoint"))
        elif stored.id not in taped:
            ungated.append((site, "its residual is recomputed from values kept anyway"))
        elif 0 < _drawn_entries(site, kept_share(site)) >= stored.type.size * copies[stored.id]:
            ungated.append((site, "its residual is kept once, and drawn again in every iteration around its op"
                            if _drawn_entries(site, 1.0) > stored.type.size * copies[stored.id]
                            else "its draws keep every entry of its residual"))
        else:
            kept.append(site)
    return kept, ungated


def _drawn_entries(site: Site, share: float) -> float:
    """Entries a sample's draws of `site` keep, at `share` of each draw."""
    return share * site.values * site.trips


def value_copies(block: Block, copies: dict[int, int] | None = None, times: int = 1) -> dict[int, int]:
    """Value id -> how many times a sample computes it (the product of the extents of the loops and
    comprehensions around its definition): the copies of it that a tape keeping it holds."""
    copies = {} if copies is None else copies
    for value in block.params:
        copies[value.id] = times
    for op in block.ops:
        extent = max(op.attrs["hi"] - op.attrs["lo"], 0) if op.kind in ("loop", "tabulate") else 1
        for region in op.regions:
            value_copies(region, copies, times * extent)
        for result in op.results:
            copies[result.id] = times
    return copies


def _ordinals(block: Block) -> dict[int, int]:
    """For each op, how many ops of its kind came before it from the same place (program order):
    one source location lowers to several ops, and each must have its own random stream."""
    seen: dict[tuple, int] = {}
    ordinals: dict[int, int] = {}

    def visit(b: Block):
        for op in b.ops:
            place = (op.kind, op.loc.key, tuple(l.key for l in op.inlined_at))
            ordinals[id(op)] = seen.get(place, 0)
            seen[place] = ordinals[id(op)] + 1
            for region in op.regions:
                visit(region)

    visit(block)
    return ordinals


def _element_shape(op: Op, operand: int, kind: str) -> tuple[int, ...]:
    if kind == "operand":
        return op.args[1 - operand].type.shape
    if kind == "edge" or (kind == "partial" and op.kind == "reduce_prod"):
        return op.args[operand].type.shape
    return op.results[0].type.shape  # elementwise partials and comprehensions


def _site_kind(op: Op, k: int, policy: str, from_params: set[int], varying: set[int]) -> str | None:
    if op.kind in LINEAR_RESIDUAL:
        other = op.args[1 - k]
        if other.id in from_params or other.id not in varying:
            return None  # params are never gated, and a constant residual costs nothing to keep
        if policy == "weights":
            return "operand" if op.args[k].id in from_params else None
        return "operand"
    if policy == "weights":
        return None
    if op.kind in PARTIAL:
        return "partial"
    if policy == "edges" and op.kind in EDGE:
        return "edge"
    return None


def _param_derived(program: Program) -> set[int]:
    """Params and views of them (rows, slices, elements, broadcasts, transposes)."""
    derived = {p.value.id for p in program.params}

    def visit(block: Block):
        for op in block.ops:
            for region in op.regions:
                visit(region)
            if op.kind in _VIEWS and op.args[0].id in derived:
                derived.add(op.result.id)

    visit(program.body)
    return derived


def _varying(program: Program) -> set[int]:
    """Values that depend on a param or an input (anything else is a compile-time constant)."""
    varying = {v.id for v in program.body.params}
    changed = True

    def visit(block: Block):
        nonlocal changed
        for op in block.ops:
            for region in op.regions:
                for p in region.params:
                    if p.id not in varying:
                        varying.add(p.id)
                        changed = True
                visit(region)
            if any(a.id in varying for a in op.args) or any(
                    y.id in varying for r in op.regions for y in r.yields):
                for r in op.results:
                    if r.id not in varying:
                        varying.add(r.id)
                        changed = True

    while changed:
        changed = False
        visit(program.body)
    return varying
