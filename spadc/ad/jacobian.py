"""Per-sample Jacobians in one kernel call (INTERFACE.md, "Derivatives of anything"): several
sweeps of forward or reverse mode sharing one evaluation of the model.

A Jacobian kernel is a product program (a VJP program of spadc/ad/vjp.py, or a forward-mode one
of spadc/ad/forward.py) whose ops that depend on the direction (the cotangent, or the tangents)
are copied once per sweep, each copy reading directions of its own. The ops that do not depend on
it (the model's evaluation, a reverse sweep's tape) run once for all the sweeps. The runtime
passes one-hot directions, the same for every sample, and assembles the columns or rows.

`kind` names a kernel: `jac.<mode>.<sweeps>.<output>.<wrt>`, mode `rev` or `fwd`, wrt `*params`
or `*inputs` (every float input: one input's Jacobian is a slice of theirs, so that a library
built ahead of time holds one kernel per output and side).

Invariants:
- Sweep b's directions are the inputs `NAME.b` (NAME the product program's direction input), its
  results the outputs `NAME.b` (NAME the product program's output). Sweep 0 is the product
  program as it is; each further sweep's copies follow it, in order, reading the shared values
  and their own: the program stays in single assignment.
- Reverse mode seeds a cotangent of the output; forward mode seeds the tangents of the params
  (`*params`) or of every float input but the states (`*inputs`).
"""

from __future__ import annotations

from spadrt.derivatives import INPUTS, JACOBIAN, PARAMS

from ..errors import SpadcError
from ..ir.core import Block, InputDecl, Op, Program, Value, copy_block
from .forward import TANGENT, linearized_program
from .vjp import COTANGENT, INPUT_COTANGENT, PARAM_COTANGENT, differentiable_inputs, seedable, vjp_program


def parse_kind(kind: str) -> tuple[str, int, str, str]:
    mode, sweeps, output, wrt = kind[len(JACOBIAN):].split(".")
    return mode, int(sweeps), output, wrt


def jacobian_program(program: Program, kind: str) -> Program:
    mode, sweeps, output, wrt = parse_kind(kind)
    if output not in seedable(program):
        raise SpadcError(f"no float output `{output}` to differentiate")
    if mode == "rev":
        product = vjp_program(program, (output,), wrt == PARAMS)
        directions = [COTANGENT + output]
        results = [name for name in product.outputs if name.startswith((INPUT_COTANGENT, PARAM_COTANGENT))]
    else:
        product = _tangent_program(program, output, wrt)
        directions = [d.name for d in product.inputs if d.name.startswith(TANGENT)]
        results = [TANGENT + output]
    return _replicated(product, directions, results, sweeps)


def _tangent_program(program: Program, output: str, wrt: str) -> Program:
    """Forward mode along the params or along the float inputs: their tangents the inputs
    `_tangent.NAME` after the model's, the output's tangent the output `_tangent.OUTPUT`."""
    if wrt not in (PARAMS, INPUTS):
        raise SpadcError(f"a Jacobian is with respect to {PARAMS} or {INPUTS}, not {wrt!r}")
    states = {id(st.value) for st in program.states}  # not inputs a caller differentiates
    seeded = (program.params if wrt == PARAMS else
              [d for d in differentiable_inputs(program) if id(d.value) not in states])
    seeds = {d.value: Value(d.value.type, TANGENT + d.name) for d in seeded}
    decls = [InputDecl(TANGENT + d.name, seeds[d.value], d.loc) for d in seeded]
    product = linearized_program(program, seeds, decls, lambda name: name == output)
    if output != "loss":  # the loss's tangent is not a column here
        del product.outputs[TANGENT + "loss"]
    return product


def _replicated(program: Program, directions: list[str], results: list[str], sweeps: int) -> Program:
    """`program` with the ops that depend on the `directions` inputs copied for sweeps 1, 2, ...
    after it (see the module's docstring); the outputs `results` become `NAME.b`, the others stay.
    Sweep 0 is the program itself: a region op that carries primal values beside tangents (a
    linearized loop) stays where later primal ops read it."""
    decls = {d.name: d for d in program.inputs}
    direction_values = [decls[name].value for name in directions]
    dependent = Block([], _dependent_ops(program.body, {v.id for v in direction_values}), [])
    ops = list(program.body.ops)
    inputs = [d for d in program.inputs if d.name not in directions]
    inputs += [InputDecl(f"{name}.0", value, decls[name].loc) for name, value in zip(directions, direction_values)]
    outputs = {k: v for k, v in program.outputs.items() if k not in results}
    outputs.update({f"{name}.0": program.outputs[name] for name in results})
    for b in range(1, sweeps):
        mapping = {}
        for name, value in zip(directions, direction_values):
            mapping[value.id] = Value(value.type, f"{value.hint}.{b}")
            inputs.append(InputDecl(f"{name}.{b}", mapping[value.id], decls[name].loc))
        ops += copy_block(dependent, mapping).ops
        outputs.update({f"{name}.{b}": mapping.get(program.outputs[name].id, program.outputs[name])
                        for name in results})
    direction_ids = {v.id for v in direction_values}
    params = [p for p in program.body.params if p.id not in direction_ids]
    body = Block(params + [d.value for d in inputs[len(program.inputs) - len(directions):]], ops, program.body.yields)
    return Program(program.name, program.params, inputs, body, outputs, program.loss, program.classifier,
                   program.files, program.states)


def _dependent_ops(body: Block, seeds: set[int]) -> list[Op]:
    """The ops of `body` that read the `seeds`, directly or through each other, of any type (a
    guard's comparison with zero included: differentiation's activity follows floats only)."""
    dependent, found = set(seeds), []
    for op in body.ops:
        if any(value.id in dependent for value in _reads(op)):
            found.append(op)
            dependent.update(r.id for r in op.results)
    return found


def _reads(op: Op):
    """The values an op reads: its args, and whatever its regions read, at any depth."""
    yield from op.args
    for region in op.regions:
        yield from region.yields
        for inner in region.ops:
            yield from _reads(inner)
