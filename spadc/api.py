"""The Python API of INTERFACE.md: `compile_file` and `compile_source` give a `spadrt.Model`.

Invariants:
- Compilation is cached by source, name and options (and the checked IR, which captures imported
  files), so compiling the same model again in one process costs only the front end.
- `Exact()` (or "exact") is the estimator that exists so far.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from spadrt import Model

from . import frontend, passes
from .ad.reverse import gradient
from .backend import jit, kernels
from .errors import Source, SpadcError
from .ir.printer import format_program

DTYPES = ("f64", "f32")
KERNELS = ("forward", "grad")
_CACHE: dict[tuple, tuple] = {}


@dataclass(frozen=True)
class Exact:
    """The exact gradient (reverse mode)."""
    name: str = "exact"


@dataclass
class Compiled:
    """Everything compilation produced for one model, kept for inspection (`spadc llvm`, `spadc ir`)."""
    program: object
    gradient: object
    llvm_ir: str  # the whole module, as compiled (before optimisation)
    functions: dict[str, str]  # kernel name -> its LLVM IR
    layout: kernels.Layout
    machine: jit.Compiled


def compile_file(path: str, dtype: str = "f64") -> Model:
    return model_of(build_file(path, dtype))


def build_file(path: str, dtype: str = "f64") -> Compiled:
    return build(frontend.read_source(path), os.path.dirname(os.path.abspath(path)), dtype)


def compile_source(text: str, name: str = "m", dtype: str = "f64") -> Model:
    return model_of(build(Source(name, text), os.getcwd(), dtype))


def build(source: Source, base_dir: str, dtype: str = "f64") -> Compiled:
    if dtype not in DTYPES:
        raise SpadcError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from .check.program import check_source
    program = frontend.lower(check_source(source, base_dir))
    grad = gradient(program, accumulate=True)
    grad.program = passes.run(grad.program)
    key = (source.name, source.text, dtype, format_program(program), format_program(grad.program))
    if key not in _CACHE:
        module, layout = kernels.build(program, grad, dtype)
        llvm_ir = str(module)
        functions = {name: str(module.get_global(name)) for name in KERNELS}
        _CACHE[key] = (llvm_ir, functions, layout, jit.compile_ir(llvm_ir, KERNELS))
    llvm_ir, functions, layout, machine = _CACHE[key]
    return Compiled(program, grad, llvm_ir, functions, layout, machine)


def model_of(compiled: Compiled) -> Model:
    return Model(compiled.layout.to_dict(), compiled.machine.addresses["forward"],
                 compiled.machine.addresses["grad"], keepalive=compiled.machine)
