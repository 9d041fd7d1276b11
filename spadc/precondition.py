"""`spadc.precondition`: the gradient preconditioners of CURVATURE.md section 3 (they live in the
runtime, spadrt/precondition.py, so that ahead-of-time builds train with them too)."""

from spadrt.precondition import (KFAC, DiagFisher, Identity, Newton, NewtonCG, Preconditioner, Shampoo,
                                 kfac_inverses, resolve, shampoo_root)

__all__ = ["Preconditioner", "Identity", "Newton", "NewtonCG", "DiagFisher", "KFAC", "Shampoo", "kfac_inverses",
           "shampoo_root", "resolve"]
