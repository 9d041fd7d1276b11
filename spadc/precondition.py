"""`spadc.precondition`: the gradient preconditioners of CURVATURE.md section 3 (they live in the
runtime, spadrt/precondition.py, so that ahead-of-time builds train with them too)."""

from spadrt.precondition import (KFAC, NEWTON_LIMIT, SHAMPOO_START, DiagFisher, Identity, Newton, NewtonCG,
                                 Preconditioner, Shampoo, kfac_inverses, resolve, shampoo_root)

__all__ = ["NEWTON_LIMIT", "SHAMPOO_START", "Preconditioner", "Identity", "Newton", "NewtonCG", "DiagFisher", "KFAC",
           "Shampoo", "kfac_inverses", "shampoo_root", "resolve"]
