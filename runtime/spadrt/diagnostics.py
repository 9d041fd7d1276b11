"""Bias and variance of a gradient estimator, measured at one point (ESTIMATORS.md section 7).

`diagnose` draws N estimates and compares them with the exact gradient at the same point, by two
statistics that a test of unbiasedness needs together:
- per coordinate, z = |mean - exact| / standard error; `max_z` is the largest (a bias confined to
  a few coordinates shows here), against K_SIGMA or, for many coordinates, a Bonferroni bound;
- pooled over all coordinates, the t-statistic of the draws' projections on the exact gradient,
  s_i = <g_i - exact, exact> / |exact|: its mean over the draws in standard errors of that mean
  (`pooled_z`). A bias along the gradient, such as weights a few percent too large, shows here
  long before any single coordinate moves; the projection's variance is estimated from the draws
  themselves, so correlations between coordinates are accounted for.

Invariants:
- Draw i uses its own seed, derived from (seed, i) by NumPy's SeedSequence, and the same step
  rule as training: RAD at `step`, a SPAD copy advancing its own counter (its state changes
  during the draws, as in training). The seed is never tied to the step.
- For SPAD a copy of the estimator is used, so the caller's counter and distributions stay as they
  were. Memory: running moments (Welford), never the draws themselves.
- `bias` (a factor, default 1) multiplies every estimate: the negative control of section 7.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from .errors import SpadcError
from .estimators import SPAD, resolve

ROUNDING = 1e-12  # relative: the size of differences that floating-point evaluation alone explains
K_SIGMA = 5.0  # per-coordinate bound on |z|, raised for many coordinates (coordinate_bound)
FAMILY_LEVEL = 1e-3  # the chance that an unbiased estimator crosses the per-coordinate bound anywhere
POOLED_BOUND = 3.2905  # two-sided 99.9% quantile of the standard normal
POWER_BIAS = 0.05  # the bias a test must be able to see: 5% along the gradient
POWER_TARGET = 7.0  # the pooled z that bias should add: rejected with probability 1 - Phi(-3.7) = 99.99%


@dataclass
class ParamDiagnostics:
    mean: np.ndarray
    stderr: np.ndarray
    exact: np.ndarray

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.mean - self.exact))

    @property
    def max_z(self) -> float:
        """The largest |mean - exact| in standard errors. Differences within floating-point rounding
        (ROUNDING relative) are not evidence of bias: averaging N equal numbers need not give that
        number back exactly, nor a spread of exactly zero."""
        difference = np.maximum(np.abs(self.mean - self.exact) - ROUNDING * (1.0 + np.abs(self.exact)), 0.0)
        z = np.where(self.stderr > 0, difference / np.where(self.stderr > 0, self.stderr, 1.0),
                     np.where(difference > 0, np.inf, 0.0))
        return float(z.max()) if z.size else 0.0


class Report(dict):
    """Param name -> ParamDiagnostics, with the pooled statistic over all params.

    `power` is the pooled z that a bias of POWER_BIAS (5%) along the gradient would add: below about
    6, the draws are too few for the test to reject such a bias reliably (`draws_for_power`)."""

    def __init__(self, params: dict, draws: int, projection: "_Moments", norm: float):
        super().__init__(params)
        self.draws = draws
        self._projection, self._norm = projection, norm  # moments of <g_i - exact, unit exact>

    @property
    def pooled_z(self) -> float:
        difference, spread = float(self._projection.mean), float(self._projection.stderr)
        if abs(difference) <= ROUNDING * (1.0 + self._norm):
            return 0.0
        return difference / spread if spread > 0 else math.copysign(math.inf, difference)

    @property
    def power(self) -> float:
        spread = float(self._projection.stderr)  # a spread within rounding: the estimator is exact
        return POWER_BIAS * self._norm / spread if spread > ROUNDING * (1.0 + self._norm) else math.inf

    def biased(self, factor: float) -> "Report":
        """The report the same draws would give if every estimate were `factor` times larger: the
        negative control of section 7, at no extra cost (exactly what `diagnose(bias=factor)` gives)."""
        params = {name: ParamDiagnostics(d.mean * factor, d.stderr * factor, d.exact) for name, d in self.items()}
        projection = _Moments(0.0)
        projection.n = self._projection.n
        projection.mean = factor * (self._projection.mean + self._norm) - self._norm
        projection.squares = factor * factor * self._projection.squares
        return Report(params, self.draws, projection, self._norm)

    @property
    def max_z(self) -> float:
        return max((d.max_z for d in self.values()), default=0.0)

    @property
    def coordinate_bound(self) -> float:
        return coordinate_bound(sum(d.mean.size for d in self.values()))

    @property
    def unbiased(self) -> bool:
        """Neither statistic rejects unbiasedness (per coordinate at `coordinate_bound`, pooled at 99.9%)."""
        return self.max_z <= self.coordinate_bound and abs(self.pooled_z) <= POOLED_BOUND


def coordinate_bound(coordinates: int) -> float:
    """K_SIGMA, or for many coordinates the Bonferroni bound that keeps the family-wise chance of
    a false alarm at FAMILY_LEVEL (5.7 for the digits MLP's 85,000 coordinates)."""
    tail = FAMILY_LEVEL / (2 * max(coordinates, 1))
    z = K_SIGMA
    while math.erfc(z / math.sqrt(2)) / 2 > tail:  # the normal tail, to 0.01
        z += 0.01
    return z


class _Moments:
    """Running mean and sum of squared deviations (Welford), elementwise."""

    def __init__(self, like):
        self.n, self.mean, self.squares = 0, np.zeros_like(like, dtype=np.float64), np.zeros_like(like, dtype=np.float64)

    def add(self, value):
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.squares += delta * (value - self.mean)

    @property
    def stderr(self):
        return np.sqrt(self.squares / (self.n - 1)) / math.sqrt(self.n)


def diagnose(model, estimator, draws: int = 1000, seed: int = 0, step: int = 0, bias: float = 1.0,
             inputs: dict | None = None, **keyword_inputs) -> Report:
    """Inputs come as keywords or in `inputs=` (any input name fits there), as for `Model.grad`."""
    if not isinstance(draws, int) or draws < 2:
        raise SpadcError(f"draws must be an integer of at least 2, got {draws!r}")
    estimator = resolve(estimator)
    inputs = {**(inputs or {}), **keyword_inputs}
    # Flat gradients, in the params' layout: a draw of a small model costs tens of microseconds,
    # and a dict of arrays per draw (statistics per param) took half of them.
    direction = np.asarray(model.flat_grad(inputs=inputs)[1], dtype=np.float64).copy()
    if isinstance(estimator, SPAD):
        estimator = copy.deepcopy(estimator)
    norm = float(np.linalg.norm(direction))
    unit = direction / norm if norm > 0 else direction
    moments, projection = _Moments(direction), _Moments(0.0)
    seeds = np.random.SeedSequence([seed, 0xD1A6]).generate_state(draws, np.uint64)
    options = {} if isinstance(estimator, SPAD) else {"step": step}
    for draw_seed in seeds:
        estimate = np.asarray(model.flat_grad(estimator=estimator, seed=int(draw_seed), **options, inputs=inputs)[1],
                              dtype=np.float64) * bias
        moments.add(estimate)
        projection.add(float(np.dot(estimate - direction, unit)))
    mean, stderr = moments.mean, moments.stderr
    params = {name: ParamDiagnostics(mean[start:stop].reshape(shape), stderr[start:stop].reshape(shape),
                                     direction[start:stop].reshape(shape))
              for name, start, stop, shape in model._param_slices}
    return Report(params, draws, projection, norm)


def draws_for_power(model, estimator, pilot: int = 200, power: float = POWER_TARGET, seed: int = 0,
                    inputs: dict | None = None, **keyword_inputs) -> int:
    """How many draws make a report's `power` reach `power` (a 5% bias then lands past the 99.9%
    bound with probability about 1 - Phi(3.29 - power)), from a pilot run's noise along the gradient."""
    report = diagnose(model, estimator, draws=pilot, seed=seed + 0x9170, inputs=inputs, **keyword_inputs)
    if not math.isfinite(report.power) or report.power <= 0:
        return pilot
    return max(pilot, math.ceil(pilot * (power / report.power) ** 2))
