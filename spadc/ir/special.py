"""The polygamma functions psi^(n) (n = 0: digamma, the derivative of lgamma; n = 1: trigamma ...),
in NumPy, by the method the compiled code uses too (spadc/backend/scalar.py reads the constants
here): shift x up past SHIFT_TO with the recurrence, then the asymptotic series.

  psi(x)     = psi(x + 1) - 1/x,                  psi ~ log x - 1/(2x) - sum_k B_2k / (2k x^2k)
  psi^(n)(x) = psi^(n)(x + 1) + (-1)^(n+1) n! / x^(n+1),
  psi^(n)    ~ (-1)^(n+1) [(n-1)!/x^n + n!/(2 x^(n+1)) + sum_k B_2k (2k+n-1)! / ((2k)! x^(2k+n))]

Invariants:
- x > 0: exact to a few ulps (the series' first omitted term is below 1e-17 relative at x >= 10).
- x < 0, not an integer: by reflection for n = 0 (psi(x) = psi(1 - x) - pi / tan(pi x)), n = 1
  (psi1(x) = pi^2 / sin^2(pi x) - psi1(1 - x)) and n = 2 (its derivative); NaN for n >= 3, so a
  Hessian product of digamma is defined everywhere, a third derivative only for x > 0.
- x a non-positive integer (a pole): NaN; NaN in, NaN out.
"""

from __future__ import annotations

import math

import numpy as np

SHIFT_TO = 10.0  # the recurrence moves x to at least this before the series (at most SHIFT_STEPS steps for x > 0)
SHIFT_STEPS = 10
BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6)  # B_2, B_4, ..., B_14


def series_coefficients(n: int) -> tuple[float, ...]:
    """c_k, k = 1..7, of the series' terms c_k / x^(2k+n) (for n = 0 they are subtracted)."""
    if n == 0:
        return tuple(b / (2 * k) for k, b in enumerate(BERNOULLI, start=1))
    return tuple(b * math.factorial(2 * k + n - 1) / math.factorial(2 * k) for k, b in enumerate(BERNOULLI, start=1))


def _positive(x: np.ndarray, n: int) -> np.ndarray:
    shifted, total = x.copy(), np.zeros_like(x)  # total: the recurrence's terms, without their sign
    for _ in range(SHIFT_STEPS):
        small = shifted < SHIFT_TO
        term = 1.0 / shifted if n == 0 else math.factorial(n) / shifted ** (n + 1)
        total = np.where(small, total + term, total)
        shifted = np.where(small, shifted + 1.0, shifted)
    series = sum(c / shifted ** (2 * k + n) for k, c in enumerate(series_coefficients(n), start=1))
    if n == 0:
        return np.log(shifted) - 0.5 / shifted - series - total
    lead = math.factorial(n - 1) / shifted ** n + math.factorial(n) / (2 * shifted ** (n + 1))
    return (1.0 if n % 2 else -1.0) * (lead + series + total)  # (-1)^(n+1)


def polygamma(x, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        pole = (x <= 0) & (x == np.floor(x))
        reflected = (x < 0) & ~pole
        base = np.where(reflected, 1.0 - x, np.where(pole, 1.0, x))
        value = _positive(base, n)
        if n == 0:
            value = np.where(reflected, value - np.pi / np.tan(np.pi * x), value)
        elif n == 1:
            value = np.where(reflected, np.pi ** 2 / np.sin(np.pi * x) ** 2 - value, value)
        elif n == 2:  # the derivative of the line above
            value = np.where(reflected, value - 2 * np.pi ** 3 * np.cos(np.pi * x) / np.sin(np.pi * x) ** 3, value)
        else:
            value = np.where(reflected, np.nan, value)
        return np.where(pole | np.isnan(x), np.nan, value)
