"""Reverse mode as an IR-to-IR transform: a program in, a gradient program out.

The gradient program runs the forward ops, then the adjoint ops, in one block; its loss is the
model's loss and its outputs are the gradients, one per param, under the param's name. Regions
become regions:
- a `loop` becomes a reversed `loop` carrying the adjoints of its carried values and of the outer
  values its body reads; the forward loop keeps, per iteration, the values the adjoint reads (its
  tape), as extra stacked results, and the reversed loop reads row `t` of them;
- a `tabulate` becomes a `loop` over its elements, reading its per-element tape the same way;
- a `cond` becomes a `cond` on the same condition, each branch the adjoint of its own.

With a `Sampling`, the adjoint is path-sampled: at each site of the policy (spadc/ad/sites.py) the
driver, not the rule, inserts the gate (spadc/ad/sampling.py), so every primitive gets RAD and
SPAD for free. With `score`, it also adds each site's scores to a buffer (SPAD evaluation steps).

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

from ..ir import primitives
from ..ir.core import REGION_OPS, Block, InputDecl, Op, Program, Value
from ..ir.types import TensorType
from . import sampling as gates
from .rules import ADJOINTS, Rule, Sparse, restore_axis
from .sites import find_sites


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
    registry: dict[int, list["_Context"]] = field(default_factory=dict)  # region op id -> its adjoint contexts


def gradient(program: Program, accumulate: bool = False, sampling=None, score: str | None = None,
             policy: str | None = None) -> GradientProgram:
    """The gradient program. `sampling`: a path-sampled adjoint; `score`: add site scores
    ("gradient": the exact adjoint's contributions; "forward": residual magnitudes, with sampling);
    `policy`: the site policy when only scores are wanted."""
    active = _activity(program)
    policy = sampling.sites if sampling is not None else policy
    sites = list(find_sites(program, policy, active).values()) if policy else []
    entries = gates.layout_sites(sites, sampling, with_scores=score is not None)
    state = _State(active, {v.id for v in program.body.params}, sampling, score,
                   {(id(e.site.op), e.site.operand): e for e in entries})
    top = _Context(Block(), None, None, state)
    adjoints = _Adjoints(top)
    accumulators = {}
    if accumulate:
        for decl in program.params:
            accumulators[decl.name] = Value(decl.value.type, f"{decl.name}.grad")
            adjoints.set(decl.value, accumulators[decl.name])
    loss_op = next(op for op in program.body.ops if program.loss in op.results)
    top.at(loss_op.loc, loss_op.inlined_at)
    adjoints.set(program.loss, top.op("const", value=1.0, dtype="f64"))
    _backward_block(top, program.body, adjoints)
    gradients = {}
    for decl in program.params:
        top.at(decl.loc, ())
        gradients[decl.name] = adjoints.get(decl.value) or top.zeros(decl.value.type)
    forward = _augment(program.body, state.registry)
    inputs = program.inputs + [InputDecl(v.hint, v, loc) for v, loc in
                               zip(accumulators.values(), (d.loc for d in program.params))]
    body = Block(list(program.body.params) + list(accumulators.values()),
                 forward.ops + top.inserts + top.block.ops, [])
    result = Program(program.name, program.params, inputs, body, gradients, program.loss, None)
    parameters = {p.value.id for p in program.params} | {i.value.id for i in inputs}
    tape = [v for v in top.read.values() if v.id not in parameters]
    return GradientProgram(result, tape, accumulators, entries, sampling, score)


# ---- activity ----------------------------------------------------------------------------

def _activity(program: Program) -> set[int]:
    """Ids of f64 values that depend on a param (a fixpoint, for loop-carried dependence)."""
    active = {p.value.id for p in program.params}
    changed = True

    def mark(value):
        nonlocal changed
        if value.type.dtype == "f64" and value.id not in active:
            active.add(value.id)
            changed = True

    def visit(block: Block):
        for op in block.ops:
            if op.kind in REGION_OPS:
                (body, *_) = op.regions
                if op.kind == "loop":
                    for k in range(len(op.args)):
                        if op.args[k].id in active or body.yields[k].id in active:
                            mark(body.params[1 + k])
                for region in op.regions:
                    visit(region)
                for region in op.regions:
                    for result, value in zip(op.results, region.yields):
                        if value.id in active:
                            mark(result)
            elif any(a.id in active for a in op.args):
                mark(op.result)

    while changed:
        changed = False
        visit(program.body)
    return active


# ---- contexts: where adjoint code goes and how it reaches primal values -----------------------

class _Context:
    """One block of adjoint code. At the top level primal values are at hand; inside the adjoint of
    a region they come from that region's tape, requested here and kept by the forward region."""

    def __init__(self, block: Block, parent: "_Context | None", region: "tuple[Op, Block] | None", state: _State,
                 index: Value | None = None):
        self.block = block
        self.parent = parent
        self.state = state
        self.op_of_region, self.forward = region if region else (None, None)
        self.index = index  # this region's index in the adjoint (the same iteration as the primal's)
        self.requests: dict[int, tuple[Value, Value]] = {}  # primal id -> (primal, kept value)
        self.inserts: list[Op] = []  # ops appended to the forward block (gates, partials)
        self.defined = set()
        self.producers: dict[int, Op] = {}
        if self.forward is not None:
            self.producers = {r.id: op for op in self.forward.ops for r in op.results}
            self.defined = {p.id for p in self.forward.params} | set(self.producers)
        self.memo: dict = {}
        self.loc, self.inlined_at = None, ()
        self.read: dict[int, Value] = {}  # top level only: forward values the adjoint reads

    @property
    def stacked(self) -> bool:
        return self.op_of_region is not None and self.op_of_region.kind in ("loop", "tabulate")

    @property
    def is_comprehension(self) -> bool:
        return self.op_of_region is not None and self.op_of_region.kind == "tabulate"

    def at(self, loc, inlined_at):
        self.loc, self.inlined_at = loc, inlined_at

    def primal(self, value: Value) -> Value:
        if self.parent is None:
            self.read[value.id] = value  # the top level reads the forward's own values: they are the tape
            return value
        if value.id in self.memo:
            return self.memo[value.id]
        if value.id not in self.defined:
            result = self.parent.primal(value)
        elif self.forward.params and value is self.forward.params[0]:
            result = self.index
        elif self._recomputable(value):
            op = self.producers[value.id]
            args = [self.primal(a) for a in op.args]
            result = Value(value.type, value.hint)
            self.block.ops.append(Op(op.kind, tuple(args), (result,), op.attrs, op.loc, op.inlined_at))
        else:
            kept = self.parent.primal(self.keep(value))
            result = self.row(kept) if self.stacked else kept
        self.memo[value.id] = result
        return result

    def _recomputable(self, value: Value) -> bool:
        """Cheaper to compute again in the adjoint than to keep on the tape: a scalar constant, or
        scalar arithmetic on the region's index, on other recomputable values and on outer values
        (loop-invariant, read once): index arithmetic such as `(i + 1) % N`, and literals."""
        key = ("recomputable", value.id)
        if key not in self.memo:
            self.memo[key] = False  # guards against cycles while deciding
            op = self.producers.get(value.id)
            self.memo[key] = (
                (self.forward.params and value is self.forward.params[0]) or
                (op is not None and op.kind in _RECOMPUTABLE and value.type.rank == 0 and
                 all(a.id not in self.defined or self._recomputable(a) for a in op.args)))
        return bool(self.memo[key])

    def keep(self, value: Value) -> Value:
        """Have the forward region yield `value` (stacked over iterations in a loop or comprehension)."""
        if value.id not in self.requests:
            kept_type = value.type
            if self.stacked:
                lo, hi = self.op_of_region.attrs["lo"], self.op_of_region.attrs["hi"]
                kept_type = value.type.with_shape((hi - lo,) + value.type.shape)
            kept = Value(kept_type, f"{value.hint}.tape" if value.hint else "tape")
            self.requests[value.id] = (value, kept)
            self.parent.defined.add(kept.id)
        return self.requests[value.id][1]

    def stacked_value(self, value: Value) -> Value:
        """A comprehension's per-element value, stacked, at the parent level (not read by the adjoint)."""
        return self.keep(value)

    def row(self, stacked: Value) -> Value:
        """Row `index - lo` of a value stacked over this region's iterations."""
        rest = tuple(("slice", 0, n) for n in stacked.type.shape[1:])
        return self.op("index", stacked, self.position(), spec=(("dyn", False),) + rest, what="tape")

    def position(self) -> Value:
        lo = self.op_of_region.attrs["lo"]
        return self.index if lo == 0 else self.op("sub", self.index, self.op("const", value=lo, dtype="i64"))

    def rows(self) -> list[Value]:
        """This element's position in each enclosing comprehension up to the draw level, outermost first."""
        if not self.is_comprehension:
            return []
        return self.parent.rows() + [self.position()]

    def op(self, kind: str, *args: Value, **attrs) -> Value:
        result = Value(primitives.infer(kind, [a.type for a in args], attrs))
        self.block.ops.append(Op(kind, tuple(args), (result,), attrs, self.loc, self.inlined_at))
        return result

    def const(self, value: float) -> Value:
        return self.op("const", value=float(value), dtype="f64")

    def zeros(self, type_: TensorType) -> Value:
        zero = self.op("const", value={"f64": 0.0, "i64": 0, "bool": False}[type_.dtype], dtype=type_.dtype)
        return self.op("broadcast", zero, shape=type_.shape) if type_.shape else zero


class _Primals:
    """What a rule may read: the primal operands and output its record declares in `saves`; a
    stored operand of a sampled site reads as its gated stand-in."""

    def __init__(self, ctx: _Context, op: Op, rule: Rule, gated_operands: dict[int, gates.SiteEntry]):
        self._ctx, self._op, self._saves, self._gated = ctx, op, rule.saves, gated_operands

    def arg(self, k: int) -> Value:
        value = self._op.args[k]
        allowed = k in self._saves or ("indices" in self._saves and value.type.dtype == "i64")
        assert allowed, f"the adjoint of {self._op.kind} reads operand {k}, which it does not declare in saves"
        if k in self._gated:
            return gates.gated(self._ctx, self._gated[k], value)
        return self._ctx.primal(value)

    def out(self) -> Value:
        assert "out" in self._saves, f"the adjoint of {self._op.kind} reads its output without declaring it"
        return self._ctx.primal(self._op.result)


class _Adjoints:
    """The adjoints of primal values within one context; contributions are summed as they come."""

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self._values: dict[int, Value] = {}

    def get(self, value: Value) -> Value | None:
        return self._values.get(value.id)

    def set(self, value: Value, adjoint: Value):
        self._values[value.id] = adjoint

    def add(self, value: Value, contribution):
        current = self._values.get(value.id)
        if isinstance(contribution, Sparse):
            base = current if current is not None else self.ctx.zeros(value.type)
            self._values[value.id] = self.ctx.op("index_add", base, contribution.g, *contribution.indices,
                                                 spec=contribution.spec)
            return
        contribution = _to_shape(self.ctx, contribution, value)
        self._values[value.id] = contribution if current is None else self.ctx.op("add", current, contribution)


def _to_shape(ctx: _Context, contribution: Value, operand: Value) -> Value:
    """A contribution of an elementwise op's result shape, summed for a scalar operand."""
    if contribution.type.shape != operand.type.shape:
        return ctx.op("reduce_sum", contribution, axis=None)
    return contribution


# ---- the reverse sweep ---------------------------------------------------------------------

def _backward_block(ctx: _Context, block: Block, adjoints: _Adjoints):
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


def _contributions(ctx: _Context, op: Op, g: Value, wanted: list[bool], rule: Rule) -> dict[int, object]:
    """Each wanted operand's contribution, gated at the sites of the policy."""
    state = ctx.state
    sites = {k: state.entries[(id(op), k)] for k in range(len(op.args)) if (id(op), k) in state.entries}
    sampled = state.sampling is not None
    gated_operands = {e.site.stored: e for k, e in sites.items() if sampled and e.site.kind == "operand"}
    partial_edges = {k for k, e in sites.items() if sampled and e.site.kind == "partial"}
    rule_wanted = [w and k not in partial_edges for k, w in enumerate(wanted)]
    contributions = {}
    if any(rule_wanted):
        results = rule.fn(ctx, op, g, rule_wanted, _Primals(ctx, op, rule, gated_operands))
        assert len(results) == len(op.args), f"the adjoint of {op.kind} gave {len(results)} adjoints"
        contributions = {k: c for k, (c, w) in enumerate(zip(results, rule_wanted)) if w and c is not None}
    for k in partial_edges:
        if wanted[k]:
            stand_in = gates.gated(ctx, sites[k], gates.partial(ctx, op, k, rule))
            spread = restore_axis(ctx, g, op.args[k].type.shape, op.attrs["axis"]) if op.kind == "reduce_prod" else g
            contributions[k] = ctx.op("mul", spread, stand_in)
    for k, entry in sites.items():
        if k not in contributions:
            continue
        if entry.site.kind == "edge":
            contributions[k] = _to_shape(ctx, contributions[k], op.args[k])
            if sampled:
                contributions[k] = ctx.op("mul", contributions[k], gates.mask(ctx, entry))
        if state.score == "gradient":
            if entry.site.kind == "operand":
                values = gates.operand_score(ctx, op, k, g, ctx.primal(op.args[entry.site.stored]))
            else:
                values = contributions[k]
            gates.score(ctx, entry, values)
    return contributions


def _free_active(ctx: _Context, block: Block) -> list[Value]:
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


def _loop_adjoint(ctx: _Context, op: Op, adjoints: _Adjoints):
    (body,) = op.regions
    n = len(op.args)
    carried = [k for k in range(n) if op.results[k].id in ctx.state.active]
    seeds = [adjoints.get(op.results[k]) for k in carried]
    if all(s is None for s in seeds):
        return
    ctx.at(op.loc, op.inlined_at)
    seeds = [s if s is not None else ctx.zeros(op.results[k].type) for s, k in zip(seeds, carried)]
    if op.attrs["hi"] <= op.attrs["lo"]:  # the loop never ran: results are the initial values
        for k, seed in zip(carried, seeds):
            adjoints.add(op.args[k], seed)
        return
    captured = _free_active(ctx, body)
    index = Value(body.params[0].type, body.params[0].hint)
    carried_adjoints = [Value(op.results[k].type, _adjoint_hint(op.results[k])) for k in carried]
    accumulators = [Value(v.type, _adjoint_hint(v)) for v in captured]
    region = Block([index, *carried_adjoints, *accumulators])
    inner = _Context(region, ctx, (op, body), ctx.state, index)
    local = _Adjoints(inner)
    for value, accumulator in zip(captured, accumulators):
        local.set(value, accumulator)
    inner.at(op.loc, op.inlined_at)
    for k, adjoint in zip(carried, carried_adjoints):
        local.add(body.yields[k], adjoint)
    _backward_block(inner, body, local)
    inner.at(op.loc, op.inlined_at)
    region.yields = ([local.get(body.params[1 + k]) or inner.zeros(body.params[1 + k].type) for k in carried]
                     + [local.get(v) for v in captured])
    initial = seeds + [adjoints.get(v) or ctx.zeros(v.type) for v in captured]
    results = _emit_region(ctx, "loop", initial, (region,), op, reverse=True)
    # The accumulators already include the outer adjoints they started from, so they replace them;
    # only then are the carried adjoints added (an initial value may also be read in the body).
    for value, result in zip(captured, results[len(carried):]):
        adjoints.set(value, result)
    for k, result in zip(carried, results[:len(carried)]):
        adjoints.add(op.args[k], result)
    ctx.state.registry[id(op)] = [inner]


def _tabulate_adjoint(ctx: _Context, op: Op, adjoints: _Adjoints):
    g = adjoints.get(op.results[0])
    if g is None:
        return
    (body,) = op.regions
    ctx.at(op.loc, op.inlined_at)
    entry = ctx.state.entries.get((id(op), -1))
    if entry is not None:  # a comprehension site: its cotangent is gated as a whole
        if ctx.state.score == "gradient":
            gates.score(ctx, entry, g)
        if ctx.state.sampling is not None:
            g = ctx.op("mul", g, gates.mask(ctx, entry))
    captured = _free_active(ctx, body)
    index = Value(body.params[0].type, body.params[0].hint)
    accumulators = [Value(v.type, _adjoint_hint(v)) for v in captured]
    region = Block([index, *accumulators])
    inner = _Context(region, ctx, (op, body), ctx.state, index)
    local = _Adjoints(inner)
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


def _cond_adjoint(ctx: _Context, op: Op, adjoints: _Adjoints):
    g = adjoints.get(op.results[0])
    if g is None:
        return
    ctx.at(op.loc, op.inlined_at)
    condition = ctx.primal(op.args[0])
    captured = []
    for region in op.regions:
        captured += [v for v in _free_active(ctx, region) if all(v is not c for c in captured)]
    branches, contexts = [], []
    for region in op.regions:
        block = Block()
        inner = _Context(block, ctx, (op, region), ctx.state)
        local = _Adjoints(inner)
        inner.at(op.loc, op.inlined_at)
        local.add(region.yields[0], g)
        _backward_block(inner, region, local)
        inner.at(op.loc, op.inlined_at)
        block.yields = [local.get(v) or inner.zeros(v.type) for v in captured]
        branches.append(block)
        contexts.append(inner)
    results = _emit_region(ctx, "cond", [condition], tuple(branches), op)
    for value, result in zip(captured, results):
        adjoints.add(value, result)
    ctx.state.registry[id(op)] = contexts


_REGION_ADJOINTS = {"loop": _loop_adjoint, "tabulate": _tabulate_adjoint, "cond": _cond_adjoint}
_RECOMPUTABLE = ("const", "add", "sub", "mul", "neg", "floordiv", "mod", "max", "min", "to_float")


def _adjoint_hint(value: Value) -> str | None:
    return f"{value.hint}.adj" if value.hint else None


def _emit_region(ctx: _Context, kind: str, args, regions, primal: Op, **extra) -> list[Value]:
    attrs = dict(lo=primal.attrs["lo"], hi=primal.attrs["hi"], var=primal.attrs["var"], **extra) if kind == "loop" else {}
    # A reversed loop's results are the final adjoints it carries: name them as its carried params.
    hints = [p.hint for p in regions[0].params[1:]] if kind == "loop" else [None] * len(regions[0].yields)
    results = [Value(y.type, hint) for y, hint in zip(regions[0].yields, hints)]
    ctx.block.ops.append(Op(kind, tuple(args), tuple(results), attrs, primal.loc, primal.inlined_at, tuple(regions)))
    return results


# ---- the forward pass, keeping what the adjoint reads ------------------------------------------

def _augment(block: Block, registry: dict) -> Block:
    """A copy of `block` whose region ops also run their contexts' inserts and yield the values
    their adjoint contexts requested."""
    ops = []
    for op in block.ops:
        if op.kind not in REGION_OPS:
            ops.append(op)
            continue
        contexts = registry.get(id(op), [])
        if op.kind == "cond":
            ops.append(_augment_cond(op, contexts, registry))
            continue
        (body,) = op.regions
        new_body = _augment(body, registry)
        kept = list(contexts[0].requests.values()) if contexts else []
        new_body.ops += contexts[0].inserts if contexts else []
        new_body.yields = list(body.yields) + [v for v, _ in kept]
        ops.append(Op(op.kind, op.args, op.results + tuple(t for _, t in kept), op.attrs, op.loc, op.inlined_at,
                      (new_body,)))
    return Block(list(block.params), ops, list(block.yields))


def _augment_cond(op: Op, contexts: list[_Context], registry: dict) -> Op:
    """Each branch yields its own kept values and zeros in place of the other branch's."""
    kept = [list(c.requests.values()) for c in contexts] or [[], []]
    regions = []
    for k, region in enumerate(op.regions):
        new_region = _augment(region, registry)
        if contexts:
            new_region.ops += contexts[k].inserts
        extra = [value if j == k else _zeros_into(new_region, value.type, op)
                 for j, requests in enumerate(kept) for value, _ in requests]
        new_region.yields = list(region.yields) + extra
        regions.append(new_region)
    results = op.results + tuple(t for requests in kept for _, t in requests)
    return Op(op.kind, op.args, results, op.attrs, op.loc, op.inlined_at, tuple(regions))


def _zeros_into(block: Block, type_: TensorType, op: Op) -> Value:
    zero = Value(TensorType(type_.dtype))
    value = {"f64": 0.0, "i64": 0, "bool": False}[type_.dtype]
    block.ops.append(Op("const", (), (zero,), {"value": value, "dtype": type_.dtype}, op.loc, op.inlined_at))
    if not type_.shape:
        return zero
    full = Value(type_)
    block.ops.append(Op("broadcast", (zero,), (full,), {"shape": type_.shape}, op.loc, op.inlined_at))
    return full
