"""Forward mode as an IR-to-IR transform, and the product programs built on it (CURVATURE.md).

`linearize(block, seeds)` copies a block and adds, beside every value that depends on a seed, its
tangent: the directional derivative along the seeds' tangents. Regions stay regions:
- a `loop` carries the tangents of its active carried values as more carried values, and stacks
  the tangents of the active values it keeps per iteration (a gradient program's tape) beside them;
- a `tabulate` yields the tangents of its active elements as more stacked results;
- a `cond` yields, from each branch, the tangent of each active result (zeros where that branch's
  value is constant).
Outer values' tangents are read inside regions as the values are, so nothing is kept: forward mode
has no tape.

On it:
- `jvp_program`: the model with one tangent input per param (shared by all samples); outputs the
  tangents of the loss (`_tangent.loss`) and of every float output (`_tangent.NAME`).
- `hvp_program`: forward over reverse, the tangent of the accumulating gradient program with the
  params' tangents and, as the tangents of the gradient's running sums, the Hessian product's own
  running sums: it accumulates sum_s H_s v in place as the gradient program accumulates sum_s g_s.
- `ggn_program`: the gradient of `sum(stop_gradient(H_out J v) * z)`, where z is the loss head's
  input (the logits of `cross_entropy`, the difference of `mse`): J^T H_out J v, the generalized
  Gauss-Newton product.

Invariants:
- The primal ops are the program's own, in their order; every tangent op follows the primal op it
  differentiates, so the program stays in single assignment and verifies.
- Only active values (spadc/ad/activity.py) get tangents; an active value whose rule gives none
  has tangent zero.
"""

from __future__ import annotations

from ..errors import SpadcError
from ..ir.core import REGION_OPS, Block, InputDecl, Op, Program, Value
from .activity import active_values
from .builder import Builder
from .reverse import GradientProgram, place_of, gradient
from .tangents import TANGENTS

TANGENT = "_tangent."  # prefix of the tangent inputs (one per param) and outputs


def is_direction(name: str) -> bool:
    """Whether an input of a product program is the direction: the same for every sample (the
    runtime passes it at stride 0), so kernels may read it as they read a param."""
    return name.startswith(TANGENT)
HVP = "_hvp."  # prefix of a Hessian product's running sums, beside the gradient's


class _Linearizer:
    def __init__(self, active: set[int], tangents: dict[int, Value]):
        self.active = active
        self.tangents = tangents  # value id -> its tangent (ids are unique program-wide)

    def tangent(self, t: Builder, value: Value) -> Value:
        found = self.tangents.get(value.id)
        return found if found is not None else t.zeros(value.type)

    def block(self, block: Block, t: Builder):
        for op in block.ops:
            if op.kind in REGION_OPS:
                if any(r.id in self.active for r in op.results):
                    t.at(op.loc, op.inlined_at)
                    getattr(self, "_" + op.kind)(op, t)
                else:
                    t.block.ops.append(op)
                continue
            t.block.ops.append(op)
            if op.result.id not in self.active:
                continue
            d = [self.tangents.get(a.id) for a in op.args]
            rule = TANGENTS[op.kind]
            if rule is None or all(x is None for x in d):
                continue
            t.at(op.loc, op.inlined_at)
            result = rule(t, op, d)
            if result is not None:
                if result.type.shape != op.result.type.shape:  # a scalar standing for a tensor
                    result = t.op("broadcast", result, shape=op.result.type.shape)
                self.tangents[op.result.id] = result

    def _region(self, body: Block, params: list[Value], t: Builder) -> tuple[Block, Builder]:
        inner = Builder(Block(list(body.params) + params))
        self.block(body, inner)
        inner.at(t.loc, t.inlined_at)  # zeros the region yields are placed at the region op
        return inner.block, inner

    def _new(self, value: Value) -> Value:
        return Value(value.type, f"{value.hint}.tan" if value.hint else None)

    def _loop(self, op: Op, t: Builder):
        (body,) = op.regions
        n = len(op.args)
        slots = [k for k in range(n) if body.params[1 + k].id in self.active]
        carried = [self._new(body.params[1 + k]) for k in slots]
        for k, param in zip(slots, carried):
            self.tangents[body.params[1 + k].id] = param
        new_body, inner = self._region(body, carried, t)
        kept = [j for j in range(n, len(body.yields)) if body.yields[j].id in self.active]
        new_body.yields = (list(body.yields[:n]) + [self.tangent(inner, body.yields[k]) for k in slots]
                           + list(body.yields[n:]) + [self.tangent(inner, body.yields[j]) for j in kept])
        initial = [self.tangent(t, op.args[k]) for k in slots]
        final = [self._new(op.results[k]) for k in slots]
        stacked = [self._new(op.results[j]) for j in kept]
        t.block.ops.append(Op("loop", op.args + tuple(initial), op.results[:n] + tuple(final) + op.results[n:]
                              + tuple(stacked), op.attrs, op.loc, op.inlined_at, (new_body,)))
        self._record(op.results, slots + kept, final + stacked)

    def _tabulate(self, op: Op, t: Builder):
        (body,) = op.regions
        new_body, inner = self._region(body, [], t)
        kept = [j for j, v in enumerate(body.yields) if v.id in self.active]
        new_body.yields = list(body.yields) + [self.tangent(inner, body.yields[j]) for j in kept]
        stacked = [self._new(op.results[j]) for j in kept]
        t.block.ops.append(Op("tabulate", op.args, op.results + tuple(stacked), op.attrs, op.loc, op.inlined_at,
                              (new_body,)))
        self._record(op.results, kept, stacked)

    def _cond(self, op: Op, t: Builder):
        wanted = [j for j, r in enumerate(op.results) if r.id in self.active]
        branches = []
        for region in op.regions:
            new_region, inner = self._region(region, [], t)
            new_region.yields = list(region.yields) + [self.tangent(inner, region.yields[j]) for j in wanted]
            branches.append(new_region)
        results = [self._new(op.results[j]) for j in wanted]
        t.block.ops.append(Op("cond", op.args, op.results + tuple(results), op.attrs, op.loc, op.inlined_at,
                              tuple(branches)))
        self._record(op.results, wanted, results)

    def _record(self, results, positions, tangents):
        for j, tangent in zip(positions, tangents):
            self.tangents[results[j].id] = tangent


def linearize(body: Block, seeds: dict[Value, Value]) -> tuple[Block, dict[int, Value]]:
    """`body` with the tangents of its active values, given each seed's tangent (`seeds`: value ->
    tangent value; the tangents become more block params, after the body's own). Returns the new
    block and the tangents by value id."""
    active = active_values(body, {v.id for v in seeds})
    linearizer = _Linearizer(active, {v.id: tangent for v, tangent in seeds.items()})
    t = Builder(Block(list(body.params) + list(seeds.values())))
    linearizer.block(body, t)
    return t.block, linearizer.tangents


def _tangent_inputs(program: Program) -> tuple[dict[Value, Value], list[InputDecl]]:
    """One tangent input per param, `_tangent.NAME`."""
    seeds = {d.value: Value(d.value.type, f"{TANGENT}{d.name}") for d in program.params}
    return seeds, [InputDecl(f"{TANGENT}{d.name}", seeds[d.value], d.loc) for d in program.params]


def _output_of(block: Block, tangents: dict[int, Value], value: Value) -> Value:
    """A value's tangent, or zeros made at the end of the block."""
    found = tangents.get(value.id)
    return found if found is not None else Builder(block).zeros(value.type)


def jvp_program(program: Program) -> Program:
    """The model and its tangents: inputs `_tangent.PARAM` after the model's own, outputs
    `_tangent.loss` and `_tangent.NAME` for every float output, after the model's own."""
    seeds, decls = _tangent_inputs(program)
    return linearized_program(program, seeds, decls, lambda name: not name.startswith("_"))


def linearized_program(program: Program, seeds: dict[Value, Value], decls: list[InputDecl], tangent_of) -> Program:
    """`program` with the tangents of its values along `seeds` (their tangent inputs `decls`, after
    its own inputs): outputs `_tangent.loss` and `_tangent.NAME` for each float output whose name
    `tangent_of` accepts, after its own."""
    body, tangents = linearize(program.body, seeds)
    outputs = dict(program.outputs)
    outputs[TANGENT + "loss"] = _output_of(body, tangents, program.loss)
    for name, value in program.outputs.items():
        if value.type.dtype == "f64" and tangent_of(name):
            outputs[TANGENT + name] = _output_of(body, tangents, value)
    return Program(program.name, program.params, program.inputs + decls, body, outputs, program.loss,
                   program.classifier, program.files, program.states)


def hvp_program(exact: GradientProgram) -> GradientProgram:
    """Forward over reverse on an accumulating gradient program: its inputs gain the params'
    tangents, its accumulators the Hessian product's running sums (`_hvp.PARAM`), its outputs the
    Hessian product summed so far beside the gradient."""
    program = exact.program
    seeds, decls = _tangent_inputs(program)
    sums = {}
    for name, accumulator in exact.accumulators.items():
        sums[name] = Value(accumulator.type, f"{HVP}{name}")
        seeds[accumulator] = sums[name]
    body, tangents = linearize(program.body, seeds)
    outputs = dict(program.outputs)
    for name, value in program.outputs.items():
        outputs[HVP + name] = _output_of(body, tangents, value)
    loc = {d.name: d.loc for d in program.params}
    inputs = program.inputs + decls + [InputDecl(v.hint, v, loc[name]) for name, v in sums.items()]
    result = Program(program.name, program.params, inputs, body, outputs, program.loss, None, program.files,
                     program.states)
    accumulators = dict(exact.accumulators)
    accumulators.update({HVP + name: v for name, v in sums.items()})
    return GradientProgram(result, [], accumulators)


def ggn_program(program: Program) -> GradientProgram:
    """J^T H_out J v summed over samples, J the Jacobian of the head's input z along the params:
    the accumulating gradient of `sum(stop_gradient(H_out dz) * z)` with dz the tangent of z."""
    head = program.head
    if head is None:
        raise SpadcError("`ggn_vp` needs a loss that is `cross_entropy(logits, label)` or `mse(a, b)` itself, "
                         f"as the whole `loss` statement; model `{program.name}` has another loss")
    kind, z = head
    seeds, decls = _tangent_inputs(program)
    body, tangents = linearize(program.body, seeds)
    t = Builder(body)
    t.at(*place_of(program, program.loss))
    dz = _output_of(body, tangents, z)
    if kind == "cross_entropy":  # H dz = p * dz - p (p . dz), p = softmax(z)
        shifted = t.op("exp", t.op("sub", z, t.op("broadcast", t.op("reduce_max", z, axis=None), shape=z.type.shape)))
        p = t.op("div", shifted, t.op("reduce_sum", shifted, axis=None))
        curvature = t.op("mul", p, t.op("sub", dz, t.op("reduce_sum", t.op("mul", p, dz), axis=None)))
    else:  # mse = mean(z * z): H = 2 / size
        curvature = t.op("mul", t.const(2.0 / z.type.size), dz)
    fixed = t.op("stop_gradient", curvature)
    surrogate = t.op("reduce_sum", t.op("mul", fixed, z), axis=None)
    linear = Program(program.name, program.params, program.inputs + decls, body, {}, surrogate, None,
                     program.files, program.states)
    return gradient(linear, accumulate=True)
