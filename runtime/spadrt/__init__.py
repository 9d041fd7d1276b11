"""spadrt: the runtime that runs models compiled by spadc, with NumPy only.

`Model` gives INTERFACE.md's interface (params, forward, loss, grad, save, load) over compiled
kernels; spadc's JIT uses it too, so compiled and loaded models behave the same.
"""

from .errors import SpadcError
from .estimators import RAD, SPAD, Exact
from .model import ForwardResult, Model
from .optim import SGD, Adagrad, Adam, AdamW, CosineLR, StepLR
from .training import History

__all__ = ["Model", "ForwardResult", "SpadcError", "Exact", "RAD", "SPAD", "SGD", "Adam", "AdamW", "Adagrad",
           "StepLR", "CosineLR", "History"]
