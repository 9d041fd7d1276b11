"""Vector-Jacobian products of any outputs (INTERFACE.md, "Derivatives of anything").

`vjp_program(program, seeded, with_params)` is a per-sample program whose outputs are the model's
own, each float input's cotangent (`_input.NAME`) and, with `with_params`, each param's
(`_grad.NAME`, per sample: a Jacobian's rows), for cotangents given as inputs (`_cotangent.NAME`,
shaped like the output they seed; `_cotangent.loss` a scalar): the reverse sweep of the surrogate
`sum_k <ct_k, out_k>`, whose gradient is exactly the VJP because the cotangents are inputs, never
differentiated. `surrogate(program, seeded)` is that objective as a program: the params'
cotangents summed over the batch are its gradient, a gradient variant like the loss's (so
estimators and memory plans apply to it as to `grad`).

Invariants:
- The model's program is not changed: the surrogate is built on a copy of its body.
- The vjp program's loss is the model's own loss (a forward kernel writes it per sample).
- Seeded names are sorted and unique, and the kernel's name says them (`parse_kind`), so each set
  of seeded outputs is one kernel, compiled once and cached like the others.
"""

from __future__ import annotations

from dataclasses import replace

from spadrt.derivatives import COTANGENT, INPUT_COTANGENT, PARAM_COTANGENT, SAMPLED, TANGENT_INPUT, VJP
from spadrt.estimators import sampling_of

from ..errors import SpadcError
from ..ir.core import Block, InputDecl, Program, Value, copy_block
from .builder import Builder
from .forward import TANGENT, linearized_program
from .reverse import gradient, place_of


def parse_kind(kind: str) -> tuple[tuple[str, ...], object]:
    """(the seeded outputs, the Sampling or None) of a VJP kernel's name."""
    body, _, sampled = kind[len(VJP):].partition(SAMPLED)
    return tuple(body.split("+")), sampling_of(sampled) if sampled else None


def differentiable_inputs(program: Program) -> list[InputDecl]:
    return [d for d in program.inputs if d.value.type.dtype == "f64" and not d.name.startswith("_")]


def seedable(program: Program) -> dict[str, Value]:
    """The values a cotangent may seed: the loss and every float output."""
    found = {name: value for name, value in program.outputs.items()
             if value.type.dtype == "f64" and not name.startswith("_")}
    found["loss"] = program.loss
    return found


def _surrogate_and_mapping(program: Program, seeded: tuple[str, ...]):
    """(a copy of the program with the cotangents as inputs after its own and the loss
    `sum_k <ct_k, out_k>`, the copy's values by original id)."""
    targets = seedable(program)
    unknown = [name for name in seeded if name not in targets]
    if unknown:
        raise SpadcError(f"no float output `{unknown[0]}` to seed a cotangent for; the model's are "
                         f"{', '.join(sorted(targets))}")
    mapping: dict[int, Value] = {}
    body = copy_block(program.body, mapping)
    params = [replace(d, value=mapping[d.value.id]) for d in program.params]
    inputs = [replace(d, value=mapping[d.value.id]) for d in program.inputs]
    outputs = {name: mapping.get(value.id, value) for name, value in program.outputs.items()}
    t = Builder(body)
    t.at(*place_of(program, program.loss))
    cotangents, surrogate = [], None
    for name in seeded:
        value = mapping.get(targets[name].id, targets[name])
        decl = InputDecl(COTANGENT + name, Value(value.type, f"{name}.cotangent"), place_of(program, targets[name])[0])
        cotangents.append(decl)
        term = t.op("mul", decl.value, value)
        term = t.op("reduce_sum", term, axis=None) if value.type.rank else term
        surrogate = term if surrogate is None else t.op("add", surrogate, term)
    body = Block(list(body.params) + [d.value for d in cotangents], body.ops, body.yields)
    linear = Program(program.name, params, inputs + cotangents, body, outputs, surrogate, None, program.files,
                     program.states)
    return linear, mapping


def surrogate(program: Program, seeded: tuple[str, ...]) -> Program:
    """The model with the cotangents of `seeded` as inputs and `sum_k <ct_k, out_k>` as its loss:
    its gradient (a gradient variant, spadc/api.py) sums the params' cotangents over the batch."""
    return _surrogate_and_mapping(program, seeded)[0]


def vjp_program(program: Program, seeded: tuple[str, ...], with_params: bool, sampling=None) -> Program:
    linear, mapping = _surrogate_and_mapping(program, seeded)
    differentiable = differentiable_inputs(program)
    taps = {INPUT_COTANGENT + d.name: mapping[d.value.id] for d in differentiable}
    reverse = gradient(linear, taps=taps, wrt_inputs=frozenset(d.name for d in differentiable),
                       sampling=sampling).program
    result = dict(linear.outputs)
    result.update({name: reverse.outputs[name] for name in taps})
    if with_params:
        result.update({PARAM_COTANGENT + d.name: reverse.outputs[d.name] for d in linear.params})
    return reverse.with_body(reverse.body, result, mapping.get(program.loss.id, program.loss), None)


def second_order_program(program: Program, seeded: tuple[str, ...]) -> Program:
    """Forward mode over the VJP program (with the params' per-sample cotangents), along tangents of
    the params (`_tangent.NAME`, shared by the samples) and of the float inputs (`_dinput.NAME`, per
    sample): its outputs gain `_tangent.OUT` for the loss, each float output and each cotangent the
    VJP gives. Those are the VJP's own derivatives: along (u_p, u_x), the outputs' tangents are
    J u (the derivative with respect to the cotangents), and the cotangents' tangents H_ct u (with
    respect to the params and inputs, H_ct the Hessian of `sum <ct, out>`)."""
    product = vjp_program(program, seeded, True)
    states = {id(st.value) for st in program.states}
    differentiable = {d.name for d in differentiable_inputs(program) if id(d.value) not in states}
    seeds, decls = {}, []
    for d in product.params:
        seeds[d.value] = Value(d.value.type, TANGENT + d.name)
        decls.append(InputDecl(TANGENT + d.name, seeds[d.value], d.loc))
    for d in product.inputs:
        if d.name in differentiable:
            seeds[d.value] = Value(d.value.type, TANGENT_INPUT + d.name)
            decls.append(InputDecl(TANGENT_INPUT + d.name, seeds[d.value], d.loc))
    return linearized_program(product, seeds, decls, lambda name: not name.startswith("_state."))
