"""Layer taps (CURVATURE.md section 2): the dense layers of a program, and a program giving, per
sample, each layer's input `a` and the gradient `delta` of the sample's loss with respect to its
output, with the per-sample gradients of every other param.

A dense layer is a top-level `W @ a` with `W` a rank-2 param read nowhere else and `a` a vector,
optionally followed by `+ b` with `b` a vector param read nowhere else. A param that is shared, or
used inside a loop (a recurrent matrix is applied once per step), is not a layer: K-FAC treats it
as any other param.

Invariants:
- The tap program is the exact reverse mode of the model (never a path-sampled one) without
  accumulation: `_tap.delta.W` is d loss_s / d (W @ a), `_tap.a.W` is a, `_grad.NAME` the sample's
  gradient of each param outside the layers. A layer's sample gradient is `outer(delta, a)` (and
  `delta` for its bias): the kernel does not form it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Program, Value, walk_ops
from .reverse import gradient

TAP = "_tap."
SAMPLE_GRADIENT = "_grad."


@dataclass(frozen=True)
class DenseLayer:
    weight: str  # the param name of W
    bias: str | None  # the param name of b, or None
    input: Value  # a
    output: Value  # W @ a


def _uses(program: Program) -> dict[int, int]:
    counts: dict[int, int] = {}
    for op in walk_ops(program.body):
        for value in op.args:
            counts[value.id] = counts.get(value.id, 0) + 1
        for region in op.regions:
            for value in region.yields:
                counts[value.id] = counts.get(value.id, 0) + 1
    for value in list(program.outputs.values()) + [program.loss]:
        counts[value.id] = counts.get(value.id, 0) + 1
    return counts


def dense_layers(program: Program) -> list[DenseLayer]:
    params = {d.value.id: d.name for d in program.params}
    uses = _uses(program)
    consumers: dict[int, list] = {}
    for op in program.body.ops:
        for value in op.args:
            consumers.setdefault(value.id, []).append(op)
    layers = []
    for op in program.body.ops:
        if op.kind != "matmul":
            continue
        weight, a = op.args
        if weight.id not in params or weight.type.rank != 2 or a.type.rank != 1 or uses.get(weight.id) != 1:
            continue
        bias = None
        following = consumers.get(op.result.id, [])
        if len(following) == 1 and following[0].kind == "add" and uses.get(op.result.id) == 1:
            other = next((v for v in following[0].args if v is not op.result), None)
            if (other is not None and other.id in params and other.type == op.result.type
                    and uses.get(other.id) == 1):
                bias = params[other.id]
        layers.append(DenseLayer(params[weight.id], bias, a, op.result))
    return layers


def tap_program(program: Program) -> tuple[Program, list[DenseLayer]]:
    layers = dense_layers(program)
    in_layers = {layer.weight for layer in layers} | {layer.bias for layer in layers if layer.bias}
    taps = {f"{TAP}delta.{layer.weight}": layer.output for layer in layers}
    exact = gradient(program, taps=taps).program
    outputs = {f"{TAP}a.{layer.weight}": layer.input for layer in layers}
    outputs.update({name: exact.outputs[name] for name in taps})
    outputs.update({SAMPLE_GRADIENT + d.name: exact.outputs[d.name] for d in program.params if d.name not in in_layers})
    return exact.with_body(exact.body, outputs, exact.loss, None), layers
