"""spadrt: the runtime that runs models compiled by spadc, with NumPy only.

`Model` gives INTERFACE.md's interface (params, forward, loss, grad, fit, save, load) over compiled
kernels; spadc's JIT uses it too, so compiled and loaded models behave the same. `load(path)`
opens a library built by `spadc build`.
"""

from .abi import ABI_VERSION
from .errors import SpadcError, SpadcWarning
from .es import ES, PES
from .estimators import RAD, SPAD, Exact
from .model import ForwardResult, Model
from .optim import SGD, Adagrad, Adam, AdamW, CosineLR, StepLR
from .library import load
from .training import History
from . import curvature, precondition

__all__ = ["curvature", "precondition", "load", "ABI_VERSION", "Model", "ForwardResult", "SpadcError", "SpadcWarning", "Exact", "RAD", "SPAD", "ES", "PES", "SGD", "Adam", "AdamW", "Adagrad",
           "StepLR", "CosineLR", "History"]
