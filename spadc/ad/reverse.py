"""Reverse mode as an IR-to-IR transform: a program in, a gradient program out.

The gradient program runs the forward ops, then the adjoint ops, in one block; its loss is the
model's loss and its outputs are the gradients, one per param, under the param's name. Regions
become regions:
- a `loop` becomes a reversed `loop` carrying the adjoints of its carried values and of the outer
  values its body reads; the forward loop keeps, per iteration, the values the adjoint reads (its
  tape), as extra stacked results, and the reversed loop reads row `t` of them. A checkpointed
  (`remat`) loop keeps only its carried values (snapshots), and each reversed iteration first
  replays the body from them (`_replay`); one with a binomial schedule keeps a few of them and
  runs the schedule's actions instead (spadc/ad/binomial.py);
- a `tabulate` becomes a `tabulate` of its elements' adjoints whose contributions to outer values
  are added after it (spadc/ad/comprehension.py), or, when that would take more memory, a `loop`
  over its elements; either reads its per-element tape the same way;
- a `cond` becomes a `cond` on the same condition, each branch the adjoint of its own; what a
  branch's adjoint reads, the forward branch lays into a record, one result shared by both
  branches (only one runs), sized for the larger.

With a `Sampling`, the adjoint is path-sampled: at each site of the policy (spadc/ad/sites.py) the
driver, not the rule, inserts the gate (spadc/ad/sampling.py), so every primitive gets RAD and
SPAD for free. Sites whose gating would save nothing are left exact (`sites.saving`), which an
exact pass over the program, run first, tells. With `score`, it also adds each site's scores to a buffer (SPAD evaluation steps).

Invariants:
- Adjoint rules (spadc/ad/rules.py) see the primal values they declare in `saves`, through the
  context, which makes them available where the adjoint runs: directly at the top level, from the
  tape inside regions. So exactly the values rules read are kept: `GradientProgram.tape` lists them.
- The driver sums fan-out, reduces contributions to scalar operands, and accumulates index
  adjoints with `index_add` (in place after code generation), so rules stay local.
- Only active values (f64 values that depend on a param) get adjoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spadrt.estimators import Sampling

from ..ir.core import REGION_OPS, Block, InputDecl, Op, Program, Value, copy_block, walk_ops
from ..ir.types import TensorType
from . import sampling as gates
from . import binomial, comprehension
from .activity import active_values
from .context import Adjoints, Context, Primals, rereadable, to_shape
from ..ir.reductions import restore_axis
from ..ir.structure import Sparse
from .rules import ADJOINTS, Rule, times
from .sites import find_sites, saving, value_copies
from .sparse import SparseAdjoints, sparse_slots


@dataclass
class GradientProgram:
    program: Program  # body: forward then adjoint; outputs: param name -> its gradient
    tape: list[Value] = field(default_factory=list)  # forward values the adjoint reads at the top level
    # With accumulate=True: param name -> the input holding the gradient summed so far; the program's
    # gradients then include it, so a kernel can sum over samples in place in the caller's buffer.
    accumulators: dict[str, Value] = field(default_factory=dict)
    sites: list[gates.SiteEntry] = field(default_factory=list)  # with sampling or scores: the sites
    sampling: object = None
    score: str | None = None
    ungated: list = field(default_factory=list)  # (site, why) for sites of the policy that would save nothing

    @property
    def gradients(self) -> dict[str, Value]:
        return self.program.outputs


@dataclass
class _State:
    """What every context of one gradient() call shares."""
    active: set[int]
    external: set[int]  # the program's params and inputs
    sampling: object  # a Sampling, or None for the exact adjoint
    score: str | None  # None | "gradient" | "forward"
    entries: dict[tuple[int, int], gates.SiteEntry]  # (id(op), operand) -> site
    producers: dict[int, Op]  # value id -> its defining op, anywhere in the program
    registry: dict[int, list[Context]] = field(default_factory=dict)  # region op id -> its adjoint contexts
    # What the adjoint reads, for `sites.saving`: value id -> ids of the ops whose rules read it, and
    # the ids of the values it keeps on the tape (read at the top level, or kept by a region).
    readers: dict[int, set[int]] = field(default_factory=dict)
    taped: set[int] = field(default_factory=set)


def gradient(program: Program, accumulate: bool = False, sampling=None, score: str | None = None,
             policy=None, taps: dict[str, Value] | None = None, wrt_inputs: frozenset[str] = frozenset()
             ) -> GradientProgram:
    """The gradient program. `sampling`: a path-sampled adjoint; `score`: add site scores
    ("gradient": the exact adjoint's contributions; "paths": the sampled adjoint's contributions
    through drawn entries, with their weights; "forward": residual magnitudes, with sampling);
    `policy`: the sites when only scores are wanted: those a `Sampling`'s adjoint would draw, or
    those of a site policy by name (then every site that could save bytes at some keep); `taps`:
    top-level values whose adjoints are outputs too, under the given names (a dense layer's output
    gradient); `wrt_inputs`: inputs differentiated too (their adjoints are read through `taps`)."""
    seeds = {p.value.id for p in program.params} | {d.value.id for d in program.inputs if d.name in wrt_inputs}
    active = active_values(program.body, seeds)
    drawn_as = sampling if sampling is not None else policy if isinstance(policy, Sampling) else None
    policy = drawn_as.sites if drawn_as is not None else policy
    sites, ungated = [], []
    if policy:  # only sites whose gating saves bytes of the exact tape (ESTIMATORS.md section 9)
        exact = _State(active, {v.id for v in program.body.params}, None, None, {},
                       {r.id: op for op in walk_ops(program.body) for r in op.results})
        _differentiate(program, exact, {})
        sites, ungated = saving(find_sites(program, policy, active).values(), exact.readers, exact.taped,
                                lambda value: rereadable(value, exact), active, value_copies(program.body),
                                lambda site: drawn_as.share_kept(site.size) if drawn_as is not None else 0.0)
    entries = gates.layout_sites(sites, sampling, score)
    state = _State(active, {v.id for v in program.body.params}, sampling, score,
                   {(id(e.site.op), e.site.operand): e for e in entries},
                   {r.id: op for op in walk_ops(program.body) for r in op.results})
    accumulators = ({decl.name: Value(decl.value.type, f"{decl.name}.grad") for decl in program.params}
                    if accumulate else {})
    top, gradients = _differentiate(program, state, accumulators, taps)
    forward = _augment(program.body, state.registry)
    inputs = program.inputs + [InputDecl(v.hint, v, loc) for v, loc in
                               zip(accumulators.values(), (d.loc for d in program.params))]
    body = Block(list(program.body.params) + list(accumulators.values()),
                 _interleave(forward.ops, top.inserts) + top.block.ops, [])
    result = Program(program.name, program.params, inputs, body, gradients, program.loss, None)
    parameters = {p.value.id for p in program.params} | {i.value.id for i in inputs}
    tape = [v for v in top.read.values() if v.id not in parameters]
    return GradientProgram(result, tape, accumulators, entries, sampling, score, ungated)


def _differentiate(program: Program, state: _State, accumulators: dict[str, Value], taps=None):
    """The adjoint of `program` in a top-level context: (that context, the gradients by name)."""
    top = Context(Block(), None, None, state)
    top.producers = {r.id: op for op in program.body.ops for r in op.results}
    adjoints = Adjoints(top)
    for decl in program.params:
        if decl.name in accumulators:
            adjoints.set(decl.value, accumulators[decl.name])
    top.at(*place_of(program, program.loss))
    # add, not set: when the loss is a param itself, its adjoint already holds the running sum
    adjoints.add(program.loss, top.op("const", value=1.0, dtype="f64"))
    _backward_block(top, program.body, adjoints)
    gradients = {}
    for decl in program.params:
        top.at(decl.loc, ())
        gradients[decl.name] = adjoints.get(decl.value) or top.zeros(decl.value.type)
    for name, value in (taps or {}).items():
        top.at(*place_of(program, value))
        gradients[name] = adjoints.get(value) or top.zeros(value.type)
    return top, gradients


def place_of(program: Program, value: Value) -> tuple:
    """(loc, inlined_at) of the op or declaration that defines a top-level value (`loss p` makes
    the loss a param itself)."""
    for op in program.body.ops:
        if value in op.results:
            return op.loc, op.inlined_at
    declaration = next(d for d in program.params + program.inputs if d.value is value)
    return declaration.loc, ()


# ---- the reverse sweep ---------------------------------------------------------------------

def _backward_block(ctx: Context, block: Block, adjoints: Adjoints):
    for op in reversed(block.ops):
        if op.kind in REGION_OPS:
            _REGION_ADJOINTS[op.kind](ctx, op, adjoints)
            continue
        g = adjoints.get(op.result)
        rule = ADJOINTS[op.kind]
        if g is None or rule.fn is None:
            continue
        wanted = [a.id in ctx.state.active for a in op.args]
        if not any(wanted):
            continue
        ctx.at(op.loc, op.inlined_at)
        for k, contribution in _contributions(ctx, op, g, wanted, rule).items():
            adjoints.add(op.args[k], contribution)


def _contributions(ctx: Context, op: Op, g: Value, wanted: list[bool], rule: Rule) -> dict[int, object]:
    """Each wanted operand's contribution, gated at the sites of the policy."""
    state = ctx.state
    sites = {k: state.entries[(id(op), k)] for k in range(len(op.args)) if (id(op), k) in state.entries}
    sampled = state.sampling is not None
    gated_operands = {e.site.stored: e for k, e in sites.items() if sampled and e.site.kind == "operand"}
    partial_edges = {k for k, e in sites.items() if sampled and e.site.kind == "partial"}
    rule_wanted = [w and k not in partial_edges for k, w in enumerate(wanted)]
    contributions = {}
    if any(rule_wanted):
        results = rule.fn(ctx, op, g, rule_wanted, Primals(ctx, op, rule, gated_operands))
        assert len(results) == len(op.args), f"the adjoint of {op.kind} gave {len(results)} adjoints"
        contributions = {k: c for k, (c, w) in enumerate(zip(results, rule_wanted)) if w and c is not None}
    for k in partial_edges:
        if wanted[k]:
            stand_in = gates.gated(ctx, sites[k], gates.partial(ctx, op, k, rule))
            spread = restore_axis(ctx, g, op.args[k].type.shape, op.attrs["axis"]) if op.kind == "reduce_prod" else g
            contributions[k] = times(ctx, spread, stand_in)
    for k, entry in sites.items():
        if k not in contributions:
            continue
        if entry.site.kind == "edge":
            contributions[k] = to_shape(ctx, contributions[k], op.args[k])
            if sampled:
                contributions[k] = ctx.op("mul", contributions[k], gates.mask(ctx, entry))
        if state.score in ("gradient", "paths"):
            if entry.site.kind == "operand":  # under `paths`, the gated stand-in: drawn entries only
                stored = op.args[entry.site.stored]
                stored = gates.gated(ctx, entry, stored) if state.score == "paths" else ctx.primal(stored)
                values = gates.operand_score(ctx, op, k, g, stored)
            else:
                values = contributions[k]
            gates.scores_of(ctx, entry, values, state.score)
    return contributions


def _free_active(ctx: Context, block: Block) -> list[Value]:
    """Active values that a region reads from outside it, in first-use order."""
    defined, seen, free = set(), set(), []

    def visit(b: Block):
        defined.update(p.id for p in b.params)
        for op in b.ops:
            for arg in op.args:
                if arg.id not in defined and arg.id in ctx.state.active and arg.id not in seen:
                    seen.add(arg.id)
                    free.append(arg)
            for region in op.regions:
                visit(region)
            defined.update(r.id for r in op.results)
        for value in b.yields:
            if value.id not in defined and value.id in ctx.state.active and value.id not in seen:
                seen.add(value.id)
                free.append(value)

    visit(block)
    return free


def _loop_adjoint(ctx: Context, op: Op, adjoints: Adjoints):
    (body,) = op.regions
    n = len(op.args)
    # A carried slot needs an adjoint when its body param is active, not only when the loop's result
    # is: `a = p; for .. { b = b + a; a = 2.0 }` reads the incoming `a` although the result `a` is
    # a constant. Such a slot's adjoint starts at zero and is not fed from its (inactive) yield.
    carried = [k for k in range(n) if body.params[1 + k].id in ctx.state.active]
    seeds = [adjoints.get(op.results[k]) for k in carried]
    if all(s is None for s in seeds):
        return  # nothing downstream of the loop depends on a param through it
    ctx.at(op.loc, op.inlined_at)
    if op.attrs["hi"] <= op.attrs["lo"]:  # the loop never ran: results are the initial values
        for k, seed in zip(carried, seeds):
            if seed is not None:
                adjoints.add(op.args[k], seed)
        return
    seeds = [s if s is not None else ctx.zeros(op.results[k].type) for s, k in zip(seeds, carried)]
    captured = _free_active(ctx, body)
    replays = op.attrs.get("remat", False)
    # A replayed iteration runs the body itself in the adjoint: the body's own index is the region's.
    index = body.params[0] if replays else Value(body.params[0].type, body.params[0].hint)
    carried_adjoints = [Value(op.results[k].type, _adjoint_hint(op.results[k])) for k in carried]
    accumulators = [Value(v.type, _adjoint_hint(v)) for v in captured]
    region = Block([index, *carried_adjoints, *accumulators])
    inner = Context(region, ctx, (op, body), ctx.state, index)
    local = Adjoints(inner)
    for value, accumulator in zip(captured, accumulators):
        local.set(value, accumulator)
    inner.at(op.loc, op.inlined_at)
    for k, adjoint in zip(carried, carried_adjoints):
        if body.yields[k].id in ctx.state.active:
            local.add(body.yields[k], adjoint)
    _backward_block(inner, body, local)
    inner.at(op.loc, op.inlined_at)
    region.yields = ([local.get(body.params[1 + k]) or inner.zeros(body.params[1 + k].type) for k in carried]
                     + [local.get(v) for v in captured])
    initial = seeds + [adjoints.get(v) or ctx.zeros(v.type) for v in captured]
    if "binomial" in op.attrs:  # a binomial schedule's actions, from rows of states (spadc/ad/binomial.py)
        inner.snapshot_rows = binomial.snapshot_rows(op)
        kept = [ctx.primal(rows) for rows in inner.snapshot_rows]
        results = binomial.reversed_loop(ctx, op, region, _taped_body(inner, body, ctx.state.registry), kept, initial)
    else:
        if replays:
            region.ops = _replay(inner, body, ctx.state.registry) + region.ops
        results = _emit_region(ctx, "loop", initial, (region,), op, reverse=True)
    # The accumulators already include the outer adjoints they started from, so they replace them;
    # only then are the carried adjoints added (an initial value may also be read in the body).
    for value, result in zip(captured, results[len(carried):]):
        adjoints.set(value, result)
    for k, result in zip(carried, results[:len(carried)]):
        adjoints.add(op.args[k], result)
    ctx.state.registry[id(op)] = [inner]


def _tabulate_adjoint(ctx: Context, op: Op, adjoints: Adjoints):
    g = adjoints.get(op.results[0])
    if g is None:
        return
    (body,) = op.regions
    ctx.at(op.loc, op.inlined_at)
    entry = ctx.state.entries.get((id(op), -1))
    if entry is not None:  # a comprehension site: its cotangent is gated as a whole
        if ctx.state.sampling is not None:
            g = ctx.op("mul", g, gates.mask(ctx, entry))
        if ctx.state.score in ("gradient", "paths"):
            gates.scores_of(ctx, entry, g, ctx.state.score)
    captured = _free_active(ctx, body)
    if comprehension.eligible(op, captured):
        ctx.state.registry[id(op)] = [comprehension.parallel_adjoint(ctx, op, adjoints, captured, g, _backward_block)]
        return
    index = Value(body.params[0].type, body.params[0].hint)
    accumulators = [Value(v.type, _adjoint_hint(v)) for v in captured]
    region = Block([index, *accumulators])
    inner = Context(region, ctx, (op, body), ctx.state, index)
    local = Adjoints(inner)
    for value, accumulator in zip(captured, accumulators):
        local.set(value, accumulator)
    inner.at(op.loc, op.inlined_at)
    local.add(body.yields[0], inner.row(g))
    _backward_block(inner, body, local)
    region.yields = [local.get(v) for v in captured]
    initial = [adjoints.get(v) or ctx.zeros(v.type) for v in captured]
    results = _emit_region(ctx, "loop", initial, (region,), op, reverse=True)
    for value, result in zip(captured, results):
        adjoints.set(value, result)
    ctx.state.registry[id(op)] = [inner]


def _cond_adjoint(ctx: Context, op: Op, adjoints: Adjoints):
    seeds = [adjoints.get(result) for result in op.results]  # several: the state a `while` carries
    if all(g is None for g in seeds):
        return
    ctx.at(op.loc, op.inlined_at)
    condition = ctx.primal(op.args[0])
    captured = []
    for region in op.regions:
        captured += [v for v in _free_active(ctx, region) if all(v is not c for c in captured)]
    outer = {v.id for v in captured}
    blocks, contexts, branch_adjoints = [], [], []
    for region in op.regions:
        block = Block()
        inner = Context(block, ctx, (op, region), ctx.state)
        local = SparseAdjoints(inner, outer)
        inner.at(op.loc, op.inlined_at)
        for value, g in zip(region.yields, seeds):
            if g is not None and value.id in ctx.state.active:
                local.add(value, g)
        _backward_block(inner, region, local)
        inner.at(op.loc, op.inlined_at)
        blocks.append(block)
        contexts.append(inner)
        branch_adjoints.append(local)
    dense = [v for v in captured if any(local.is_dense(v) for local in branch_adjoints)]
    dense_ids = {v.id for v in dense}
    slots = sparse_slots([v for v in captured if v.id not in dense_ids], branch_adjoints)
    for block, local in zip(blocks, branch_adjoints):
        block.yields = ([local.get(v) or local.ctx.zeros(v.type) for v in dense]
                        + [part for slot in slots for part in local.slot_yields(*slot)])
    record = _settle_record(ctx, contexts, blocks)
    results = _emit_region(ctx, "cond", [condition], tuple(blocks), op)
    for value, result in zip(dense, results):
        adjoints.add(value, result)
    position = len(dense)
    for value, spec, _, _ in slots:
        width = 1 + sum(1 for kind, *_ in spec if kind == "dyn")
        g_slot, *indices = results[position:position + width]
        adjoints.add(value, Sparse(g_slot, spec, tuple(indices)))
        position += width
    ctx.state.registry[id(op)] = (contexts, record)


def _settle_record(ctx: Context, contexts: list[Context], branches: list[Block]) -> Value | None:
    """The cond's kept record: as many words as the larger branch keeps. The adjoint reads it in
    `ctx` (from the tape, in a loop) and the branches' fields read that instead of their stand-in."""
    size = max(c.record_size for c in contexts)
    if not size:
        return None
    record = Value(TensorType("i64", (size,)), "tape")
    ctx.defined.add(record.id)
    view = ctx.primal(record)
    for context, branch in zip(contexts, branches):
        for inner in branch.ops:
            if inner.kind == "field" and inner.args[0] is context.record_view:
                inner.args = (view,)
    return record


_REGION_ADJOINTS = {"loop": _loop_adjoint, "tabulate": _tabulate_adjoint, "cond": _cond_adjoint}


def _adjoint_hint(value: Value) -> str | None:
    return f"{value.hint}.adj" if value.hint else None


def _emit_region(ctx: Context, kind: str, args, regions, primal: Op, **extra) -> list[Value]:
    attrs = dict(lo=primal.attrs["lo"], hi=primal.attrs["hi"], var=primal.attrs["var"], **extra) if kind == "loop" else {}
    if "flat" in primal.attrs and kind == "loop":  # the same iterations, so the same random keys
        attrs["flat"] = primal.attrs["flat"]
    # A reversed loop's results are the final adjoints it carries: name them as its carried params.
    hints = [p.hint for p in regions[0].params[1:]] if kind == "loop" else [None] * len(regions[0].yields)
    results = [Value(y.type, hint) for y, hint in zip(regions[0].yields, hints)]
    ctx.block.ops.append(Op(kind, tuple(args), tuple(results), attrs, primal.loc, primal.inlined_at, tuple(regions)))
    return results


def _replay(inner: Context, body: Block, registry: dict) -> list[Op]:
    """The ops that rebuild one iteration of a checkpointed loop at the start of its adjoint: its
    carried values read from their snapshot (what the forward loop kept of them), then the body as
    a taped forward pass runs it (nested loops keeping their tapes, the adjoint's forward inserts).
    They define the body's own values, which the adjoint reads (Context.primal)."""
    replay = _taped_body(inner, body, registry)
    read = {v.id for op in replay for nested in walk_ops(Block(ops=[op]))
            for v in (*nested.args, *(y for region in nested.regions for y in region.yields))}
    outer_block, inner.block = inner.block, Block()
    for param in body.params[1:]:
        if param.id in read:
            snapshots = inner.parent.primal(inner.keep(param))
            spec = (("dyn", False),) + tuple(("slice", 0, n) for n in param.type.shape)
            inner.block.ops.append(Op("index", (snapshots, inner.position()), (param,), {"spec": spec, "what": "tape"},
                                      inner.loc, inner.inlined_at))
    prefix, inner.block = inner.block.ops, outer_block
    return prefix + replay


def _taped_body(inner: Context, body: Block, registry: dict) -> list[Op]:
    """The ops of a checkpointed loop's body as a taped forward pass runs them: nested loops keeping
    their tapes, the adjoint's forward inserts among them."""
    return _interleave(_augment(body, registry).ops, inner.inserts)


# ---- the forward pass, keeping what the adjoint reads ------------------------------------------

def _augment(block: Block, registry: dict) -> Block:
    """A copy of `block` whose region ops also run their contexts' inserts and yield the values
    their adjoint contexts requested."""
    ops = []
    for op in block.ops:
        if op.kind not in REGION_OPS:
            ops.append(op)
            continue
        if op.kind == "cond":
            ops.append(_augment_cond(op, registry.get(id(op)), registry))
            continue
        contexts = registry.get(id(op), [])
        if op.attrs.get("remat") and contexts:
            if "binomial" in op.attrs:
                ops += binomial.forward(op, contexts[0].snapshot_rows)
            else:
                ops.append(_snapshotting(op, contexts[0]))
            continue
        (body,) = op.regions
        new_body = _augment(body, registry)
        kept = list(contexts[0].requests.values()) if contexts else []
        new_body.ops = _interleave(new_body.ops, contexts[0].inserts if contexts else [])
        new_body.yields = list(body.yields) + [v for v, _ in kept]
        ops.append(Op(op.kind, op.args, op.results + tuple(t for _, t in kept), op.attrs, op.loc, op.inlined_at,
                      (new_body,)))
    return Block(list(block.params), ops, list(block.yields))


def _snapshotting(op: Op, inner: Context) -> Op:
    """A checkpointed loop's forward pass: its body untaped (a copy: the adjoint's replay runs the
    original), yielding the carried values its replay reads as they were at each iteration's start."""
    (body,) = op.regions
    copies = {}
    new_body = copy_block(body, copies)
    snapshots = list(inner.requests.values())
    new_body.yields += [copies[param.id] for param, _ in snapshots]
    return Op(op.kind, op.args, op.results + tuple(kept for _, kept in snapshots), op.attrs, op.loc, op.inlined_at,
              (new_body,))


def _augment_cond(op: Op, settled, registry: dict) -> Op:
    """Each branch lays what its adjoint reads into its record; the cond yields it as one more result."""
    contexts, record = settled if settled else ([], None)
    regions = []
    for k, region in enumerate(op.regions):
        new_region = _augment(region, registry)
        new_region.ops = _interleave(new_region.ops, contexts[k].inserts) if contexts else new_region.ops
        new_region.yields = list(region.yields)
        if record is not None:
            laid = Value(record.type, "tape")
            new_region.ops.append(Op("record", tuple(contexts[k].record_values), (laid,), {"size": record.type.size},
                                     op.loc, op.inlined_at))
            new_region.yields.append(laid)
        regions.append(new_region)
    results = op.results + ((record,) if record is not None else ())
    return Op(op.kind, op.args, results, op.attrs, op.loc, op.inlined_at, tuple(regions))


def _interleave(ops: list[Op], inserts: list[Op]) -> list[Op]:
    """`ops` with each insert placed right after the ops defining its operands, so that what the
    forward pass computes for the adjoint (a comparison, a gate's pack) runs while its operands are
    still needed anyway, and does not keep them alive to the end of the forward pass."""
    after: dict[int, list[Op]] = {}  # position in `ops` (-1: the start) -> inserts placed after it
    defined = {r.id: position for position, op in enumerate(ops) for r in op.results}
    for insert in inserts:
        position = max((defined.get(a.id, -1) for a in insert.args), default=-1)
        after.setdefault(position, []).append(insert)
        for result in insert.results:
            defined[result.id] = position
    result = list(after.get(-1, []))
    for position, op in enumerate(ops):
        result.append(op)
        result += after.get(position, [])
    return result


