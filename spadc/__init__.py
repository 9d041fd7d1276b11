"""spadc: a compiler for a small differentiable language, with exact and path-sampled adjoints.

`compile_file` / `compile_source` give a `Model` (INTERFACE.md) whose forward pass and exact
gradient run as machine code compiled with LLVM. The front end alone is `check_file` / `check_text`,
and `spadc.ir.interpret.evaluate` runs its IR with NumPy, the reference for everything compiled.
"""

__version__ = "0.1.0"  # first: modules imported below read it

from spadrt import SGD, Adagrad, Adam, AdamW, CosineLR, ForwardResult, History, Model, SpadcWarning, StepLR
from spadrt.es import ES, PES
from spadrt.estimators import RAD, SPAD, Exact

from .api import compile_file, compile_source
from .errors import SpadcError
from .frontend import check_file, check_text
from .init import initial_params
from . import curvature, precondition

__all__ = ["curvature", "precondition", "SpadcError", "SpadcWarning", "Model", "ForwardResult", "History", "Exact", "RAD", "SPAD", "ES", "PES", "SGD", "Adam", "AdamW",
           "Adagrad", "StepLR", "CosineLR", "compile_file", "compile_source", "check_file",
           "check_text", "initial_params"]
