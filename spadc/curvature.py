"""`spadc.curvature`: layer taps, per-example gradients, Fisher diagonals, K-FAC's factors, the top
Hessian eigenvalue and Hutchinson's trace (CURVATURE.md sections 2 and 4; spadrt/curvature.py)."""

from spadrt.curvature import (LayerTap, Taps, fisher_diagonal, hutchinson_trace, kfac_factors, per_example_gradients,
                              taps, top_eigenvalue)

__all__ = ["LayerTap", "Taps", "taps", "per_example_gradients", "fisher_diagonal", "kfac_factors", "top_eigenvalue",
           "hutchinson_trace"]
