"""The kernels beside a model's forward and gradient kernels, built on first use in the JIT (by
kind) and ahead of time (under a C symbol): the forward kernel itself, ES's particles, the
curvature products (jvp, hvp, ggn, taps), VJPs (and forward mode over them: a VJP's own
derivatives, for reverse mode of order two), and Jacobians.

`build(compiled, module, kind, symbol)` adds kernel `kind` to an LLVM module and returns its
layout entry. `compiled` is what the kernels read of a build: its `program`, `layout`, `dtype`,
`max_memory`, `lanes`, `split` (the part computed once per call) and exact `gradient`.

Invariants:
- A kernel's function is named `symbol` (by default its kind: the JIT looks kernels up by kind).
- A derived kernel's entry lists its outputs, and a Jacobian's or a second-order VJP's the inputs
  it reads after the model's, in order: the runtime passes and reads them by these lists.
"""

from __future__ import annotations

from spadrt.derivatives import SECOND_ORDER

from .ad import jacobian, vjp
from .ad.forward import HVP, ggn_program, hvp_program, jvp_program
from .ad.taps import tap_program
from .backend import kernels
from .errors import SpadcError
from . import passes

PARTICLES = "particles"  # the kernel key of the forward kernel with a parameter vector per particle


def build(compiled, module, kind: str, symbol: str | None = None) -> dict:
    symbol = symbol or kind
    if kind.startswith(jacobian.JACOBIAN):
        return _jacobian_kernel(compiled, module, kind, symbol)
    if kind.startswith(SECOND_ORDER):
        program = passes.run(vjp.second_order_program(compiled.program, tuple(kind[len(SECOND_ORDER):].split("+"))))
        return _with_inputs(compiled, _derived_forward_kernel(compiled, module, program, symbol), program)
    if kind.startswith(vjp.VJP):
        return _vjp_kernel(compiled, module, kind, symbol)
    if kind not in _KERNELS:
        raise SpadcError(f"no kernel `{kind}`; the kernels are grad, {', '.join(_KERNELS)}, vjp.OUTPUTS and "
                         "jac.MODE.SWEEPS.OUTPUT.SIDE")
    return _KERNELS[kind](compiled, module, symbol)


def _forward_kernel(compiled, module, symbol: str) -> dict:
    """The model's forward kernel: compiled the first time a loss or an output is asked for (a
    first gradient, like JAX's first call of value_and_grad, compiles only what it needs)."""
    _, outputs = kernels.base_layout(compiled.program, compiled.dtype)
    return kernels.forward_kernel(module, compiled.program, compiled.layout, outputs, compiled.dtype, symbol,
                                  compiled.max_memory, lanes=compiled.lanes, split=compiled.split)


def _particles_kernel(compiled, module, symbol: str) -> dict:
    _, outputs = kernels.base_layout(compiled.program, compiled.dtype)
    return kernels.forward_kernel(module, compiled.program, compiled.layout, outputs, compiled.dtype, symbol,
                                  compiled.max_memory, particles=True)


def _jvp_kernel(compiled, module, symbol: str) -> dict:
    """A forward kernel over the model with its tangents; the runtime gives the tangent inputs."""
    return _derived_forward_kernel(compiled, module, passes.run(jvp_program(compiled.program)), symbol)


def _derived_forward_kernel(compiled, module, program, symbol: str) -> dict:
    """A forward kernel over a program derived from the model's (its outputs in the entry: they are
    not the model's)."""
    entry = kernels.forward_kernel(module, program, compiled.layout, program.outputs, compiled.dtype, symbol,
                                   compiled.max_memory, lanes=compiled.lanes)
    entry["outputs"] = [{"name": n, "shape": list(v.type.shape), "dtype": v.type.dtype} for n, v in program.outputs.items()]
    return entry


def _taps_kernel(compiled, module, symbol: str) -> dict:
    """A forward kernel over the model's exact reverse mode, writing each sample's layer taps."""
    program, layers = tap_program(compiled.program)
    entry = _derived_forward_kernel(compiled, module, passes.run(program), symbol)
    entry["layers"] = [{"weight": layer.weight, "bias": layer.bias} for layer in layers]
    return entry


def _hvp_kernel(compiled, module, symbol: str) -> dict:
    """A gradient kernel summing the gradient (at the params' offsets) and H v (after it)."""
    product = hvp_program(compiled.gradient)
    product.program = passes.run(product.program)
    offsets = {p["name"]: p["offset"] for p in compiled.layout["params"]}
    offsets.update({HVP + name: compiled.layout["param_count"] + offset for name, offset in list(offsets.items())})
    return kernels.grad_kernel(module, product, compiled.layout, compiled.dtype, symbol, compiled.max_memory, offsets,
                               compiled.lanes)


def _ggn_kernel(compiled, module, symbol: str) -> dict:
    product = ggn_program(compiled.program)
    product.program = passes.run(product.program)
    return kernels.grad_kernel(module, product, compiled.layout, compiled.dtype, symbol, compiled.max_memory,
                               lanes=compiled.lanes)


def _vjp_kernel(compiled, module, kind: str, symbol: str) -> dict:
    """A forward kernel over a VJP program (spadc/ad/vjp.py): per sample, the outputs and the float
    inputs' cotangents, for the cotangents given as inputs (path-sampled when the name says so)."""
    seeded, sampling = vjp.parse_kind(kind)
    program = vjp.vjp_program(compiled.program, seeded, False, sampling)
    return _derived_forward_kernel(compiled, module, passes.run(program), symbol)


def _jacobian_kernel(compiled, module, kind: str, symbol: str) -> dict:
    """A forward kernel of several Jacobian sweeps sharing one evaluation (spadc/ad/jacobian.py);
    its entry lists the inputs it reads after the model's (the directions), in order."""
    program = passes.run(jacobian.jacobian_program(compiled.program, kind))
    return _with_inputs(compiled, _derived_forward_kernel(compiled, module, program, symbol), program)


def _with_inputs(compiled, entry: dict, program) -> dict:
    """The entry with `inputs`: the kernel's own inputs after the model's, in order."""
    own = len(compiled.program.inputs)
    entry["inputs"] = [{"name": d.name, "shape": list(d.value.type.shape)} for d in program.inputs[own:]]
    return entry


_KERNELS = {"forward": _forward_kernel, PARTICLES: _particles_kernel, "jvp": _jvp_kernel, "hvp": _hvp_kernel, "ggn": _ggn_kernel,
                  "taps": _taps_kernel}
