"""spadc: a compiler for a small differentiable language, with exact and path-sampled adjoints.

`compile_file` / `compile_source` give a `Model` (INTERFACE.md) whose forward pass and exact
gradient run as machine code compiled with LLVM. The front end alone is `check_file` / `check_text`,
and `spadc.ir.interpret.evaluate` runs its IR with NumPy, the reference for everything compiled.

The public names are imported on first use (PEP 562), so that `import spadc.entry` (the command
line's first step) loads nothing heavy: a Ctrl-C while NumPy and LLVM load is then the command's
own one-line message, not a traceback.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "spadrt": ["SGD", "Adagrad", "Adam", "AdamW", "CosineLR", "ForwardResult", "History", "Model", "SpadcWarning",
               "StepLR"],
    "spadrt.es": ["ES", "PES"],
    "spadrt.estimators": ["RAD", "SPAD", "Exact"],
    "spadc.api": ["compile_file", "compile_source"],
    "spadc.cluster": ["Ray"],
    "spadc.sweeps": ["sweep"],
    "spadc.errors": ["SpadcError"],
    "spadc.frontend": ["check_file", "check_text"],
    "spadc.init": ["initial_params"],
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["curvature", "precondition", "SpadcError", "SpadcWarning", "Model", "ForwardResult", "History", "Exact",
           "RAD", "SPAD", "ES", "PES", "SGD", "Adam", "AdamW", "Adagrad", "StepLR", "CosineLR", "compile_file",
           "compile_source", "check_file", "check_text", "initial_params", "Ray", "sweep"]


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:  # a submodule (`spadc.api`, `spadc.curvature`), as if the package had imported it
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'spadc' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
