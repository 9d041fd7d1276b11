"""Reverse mode as an IR-to-IR transform: a program in, a gradient program out.

The gradient program runs the forward ops, then the adjoint ops, in one block; its loss is the
model's loss and its outputs are the gradients, one per param, under the param's name. Regions become regions:
- a `loop` becomes a reversed `loop` carrying the adjoints of its carried values and of the outer
  values its body reads; the forward loop keeps, per iteration, the values the adjoint reads (its
  tape), as extra stacked results, and the reversed loop reads row `t` of them;
- a `tabulate` becomes a `loop` over its elements, reading its per-element tape the same way;
- a `cond` becomes a `cond` on the same condition, each branch the adjoint of its own.

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

from ..ir.core import REGION_OPS, Block, InputDecl, Op, Program, Value
from ..ir import primitives
from ..ir.types import TensorType
from .rules import ADJOINTS, Rule, Sparse


@dataclass
class GradientProgram:
    program: Program  # body: forward then adjoint; outputs: param name -> its gradient
    tape: list[Value] = field(default_factory=list)  # forward values the adjoint reads at the top level
    # With accumulate=True: param name -> the input holding the gradient summed so far; the program's
    # gradients then include it, so a kernel can sum over samples in place in the caller's buffer.
    accumulators: dict[str, Value] = field(default_factory=dict)

    @property
    def gradients(self) -> dict[str, Value]:
        return self.program.outputs


def gradient(program: Program, accumulate: bool = False) -> GradientProgram:
    active = _activity(program)
    top = _Context(Block(), None, None, active)
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
    forward = _augment(program.body, top.registry)
    inputs = program.inputs + [InputDecl(v.hint, v, loc) for v, loc in
                               zip(accumulators.values(), (d.loc for d in program.params))]
    body = Block(list(program.body.params) + list(accumulators.values()), forward.ops + top.block.ops, [])
    result = Program(program.name, program.params, inputs, body, gradients, program.loss, None)
    parameters = {p.value.id for p in program.params} | {i.value.id for i in inputs}
    tape = [v for v in top.read.values() if v.id not in parameters]
    return GradientProgram(result, tape, accumulators)


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
                    n = len(op.args)
                    for k in range(n):
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

    def __init__(self, block: Block, parent: "_Context | None", region: "tuple[Op, Block] | None", active: set[int],
                 index: Value | None = None):
        self.block = block
        self.parent = parent
        self.active = active
        self.op_of_region, self.forward = region if region else (None, None)
        self.index = index  # this region's index in the adjoint (the same iteration as the primal's)
        self.requests: dict[int, tuple[Value, Value]] = {}  # primal id -> (primal, kept value)
        self.defined = set()
        if self.forward is not None:
            self.defined = {p.id for p in self.forward.params} | {r.id for op in self.forward.ops for r in op.results}
        self._memo: dict[int, Value] = {}
        self.loc, self.inlined_at = None, ()
        # region op id -> the contexts of its adjoint, shared by all contexts of one gradient() call
        self.registry: dict[int, list[_Context]] = parent.registry if parent else {}
        self.read: dict[int, Value] = {}  # top level only: forward values the adjoint reads

    @property
    def stacked(self) -> bool:
        return self.op_of_region is not None and self.op_of_region.kind in ("loop", "tabulate")

    def at(self, loc, inlined_at):
        self.loc, self.inlined_at = loc, inlined_at

    def primal(self, value: Value) -> Value:
        if self.parent is None:
            self.read[value.id] = value  # the top level reads the forward's own values: they are the tape
            return value
        if value.id in self._memo:
            return self._memo[value.id]
        if value.id not in self.defined:
            result = self.parent.primal(value)
        elif self.forward.params and value is self.forward.params[0]:
            result = self.index
        else:
            if value.id not in self.requests:
                kept_type = value.type
                if self.stacked:
                    lo, hi = self.op_of_region.attrs["lo"], self.op_of_region.attrs["hi"]
                    kept_type = value.type.with_shape((hi - lo,) + value.type.shape)
                kept = Value(kept_type, f"{value.hint}.tape" if value.hint else "tape")
                self.requests[value.id] = (value, kept)
                self.parent.defined.add(kept.id)
            kept = self.parent.primal(self.requests[value.id][1])
            result = self.row(kept) if self.stacked else kept
        self._memo[value.id] = result
        return result

    def row(self, stacked: Value) -> Value:
        """Row `index - lo` of a value stacked over this region's iterations."""
        lo = self.op_of_region.attrs["lo"]
        position = self.index if lo == 0 else self.op("sub", self.index, self.op("const", value=lo, dtype="i64"))
        rest = tuple(("slice", 0, n) for n in stacked.type.shape[1:])
        return self.op("index", stacked, position, spec=(("dyn", False),) + rest, what="tape")

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
    """What a rule may read: the primal operands and output its record declares in `saves`."""

    def __init__(self, ctx: _Context, op: Op, rule: Rule):
        self._ctx, self._op, self._saves = ctx, op, rule.saves

    def arg(self, k: int) -> Value:
        value = self._op.args[k]
        allowed = k in self._saves or ("indices" in self._saves and value.type.dtype == "i64")
        assert allowed, f"the adjoint of {self._op.kind} reads operand {k}, which it does not declare in saves"
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
        if contribution.type.shape != value.type.shape:  # a scalar operand of an elementwise op
            contribution = self.ctx.op("reduce_sum", contribution, axis=None)
        self._values[value.id] = contribution if current is None else self.ctx.op("add", current, contribution)


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
        wanted = [a.id in ctx.active for a in op.args]
        if not any(wanted):
            continue
        ctx.at(op.loc, op.inlined_at)
        contributions = rule.fn(ctx, op, g, wanted, _Primals(ctx, op, rule))
        assert len(contributions) == len(op.args), f"the adjoint of {op.kind} gave {len(contributions)} adjoints"
        for arg, contribution, want in zip(op.args, contributions, wanted):
            if want and contribution is not None:
                adjoints.add(arg, contribution)


def _free_active(ctx: _Context, block: Block) -> list[Value]:
    """Active values that a region reads from outside it, in first-use order."""
    defined, seen, free = set(), set(), []

    def visit(b: Block):
        defined.update(p.id for p in b.params)
        for op in b.ops:
            for arg in op.args:
                if arg.id not in defined and arg.id in ctx.active and arg.id not in seen:
                    seen.add(arg.id)
                    free.append(arg)
            for region in op.regions:
                visit(region)
            defined.update(r.id for r in op.results)
        for value in b.yields:
            if value.id not in defined and value.id in ctx.active and value.id not in seen:
                seen.add(value.id)
                free.append(value)

    visit(block)
    return free


def _loop_adjoint(ctx: _Context, op: Op, adjoints: _Adjoints):
    (body,) = op.regions
    n = len(op.args)
    carried = [k for k in range(n) if op.results[k].id in ctx.active]
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
    inner = _Context(region, ctx, (op, body), ctx.active, index)
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
    ctx.registry[id(op)] = [inner]


def _tabulate_adjoint(ctx: _Context, op: Op, adjoints: _Adjoints):
    g = adjoints.get(op.results[0])
    if g is None:
        return
    (body,) = op.regions
    ctx.at(op.loc, op.inlined_at)
    captured = _free_active(ctx, body)
    index = Value(body.params[0].type, body.params[0].hint)
    accumulators = [Value(v.type, _adjoint_hint(v)) for v in captured]
    region = Block([index, *accumulators])
    inner = _Context(region, ctx, (op, body), ctx.active, index)
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
    ctx.registry[id(op)] = [inner]


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
        inner = _Context(block, ctx, (op, region), ctx.active)
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
    ctx.registry[id(op)] = contexts


_REGION_ADJOINTS = {"loop": _loop_adjoint, "tabulate": _tabulate_adjoint, "cond": _cond_adjoint}


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
    """A copy of `block` whose region ops also yield the values their adjoint contexts requested."""
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
        extra = [value if j == k else _zeros_into(new_region, value.type, op)
                 for j, requests in enumerate(kept) for value, _ in requests]
        new_region.yields = list(region.yields) + extra
        regions.append(new_region)
    results = op.results + tuple(t for requests in kept for _, t in requests)
    return Op(op.kind, op.args, results, op.attrs, op.loc, op.inlined_at, tuple(regions))


def _zeros_into(block: Block, type_: TensorType, op: Op) -> Value:
    ctx = _Context(block, None, None, set())
    ctx.at(op.loc, op.inlined_at)
    return ctx.zeros(type_)
