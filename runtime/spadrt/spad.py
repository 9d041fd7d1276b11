"""SPAD's per-site distributions, from scores (ESTIMATORS.md section 4); NumPy only.

The kernels read them from the site-data buffer, laid out per site as the layout's `sites` say:
importance with replacement: q[d] then its cumulative sum[d]; importance Bernoulli: p[d]; topk: the
k kept entry indices.

Invariants:
- importance: q_i = (1 - floor) s_i / sum(s) + floor / d, uniform when every score is zero; each
  q_i > 0 when floor > 0, so the estimate stays unbiased; the cumulative sum ends at exactly 1.
- Bernoulli: p_i = min(1, c q_i) with c chosen (water-filling) so that sum(p) = keep * d.
- topk: the k best-ranked entries (ties to the lower index), kept with weight 1.
"""

from __future__ import annotations

import numpy as np


def initial_data(sites: list[dict], size: int, draw: str, scheme: str) -> np.ndarray:
    """Uniform distributions for every site (what SPAD follows before its first evaluation)."""
    data = np.zeros(max(size, 1))
    for site in sites:
        if site["data_size"]:
            _write(data, site, np.zeros(site["d"]), 0.0, draw, scheme, 1.0)
    return data


def update(data: np.ndarray, sites: list[dict], scored_sites: list[dict], scores: np.ndarray, draw: str,
           scheme: str, floor: float, keep: float, observed: bool = False):
    """Re-rank every site from its scores (summed over the evaluation batch and loop iterations).

    `sites` are the sampling kernel's (where each site's data lives), `scored_sites` the scoring
    kernel's (where its scores are): the same sites, in the same order. With `observed` (score
    "paths"), each site's scores are followed by the weights of the draws that observed them: an
    entry's score is then the mean of what was observed for it, and an entry never drawn takes its
    site's mean observed score."""
    assert [s["id"] for s in sites] == [s["id"] for s in scored_sites], "kernels disagree on the sites"
    for site, scored in zip(sites, scored_sites):
        if site["data_size"] and scored["score_offset"] >= 0:
            start, d = scored["score_offset"], site["d"]
            values = scores[start:start + d]
            if observed:
                values = observed_means(values, scores[start + d:start + 2 * d])
            _write(data, site, values, floor, draw, scheme, keep)


def observed_means(totals: np.ndarray, weights: np.ndarray) -> np.ndarray:
    seen = weights > 0
    means = np.where(seen, totals / np.where(seen, weights, 1.0), 0.0)
    if seen.any():
        means[~seen] = means[seen].mean()
    return means


def importance(scores: np.ndarray, floor: float) -> np.ndarray:
    d = scores.size
    total = scores.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(d, 1.0 / d)
    return (1.0 - floor) * scores / total + floor / d


def water_fill(q: np.ndarray, budget: float) -> np.ndarray:
    """p = min(1, c q) with sum(p) = budget (budget <= d)."""
    p = np.zeros_like(q)
    capped = np.zeros(q.size, dtype=bool)
    for _ in range(q.size + 1):
        free = ~capped
        mass = q[free].sum()
        remaining = budget - capped.sum()
        if mass <= 0 or remaining <= 0:
            break
        p[free] = q[free] * (remaining / mass)
        newly = free & (p >= 1.0)
        if not newly.any():
            break
        capped |= newly
        p[capped] = 1.0
    p[capped] = 1.0
    return np.clip(p, 0.0, 1.0)


def _write(data, site, scores, floor, draw, scheme, keep):
    start, d, k = site["data_offset"], site["d"], site["k"]
    if scheme == "fixed":
        ranked = np.argsort(-scores, kind="stable")[:k]
        data[start:start + k] = np.sort(ranked).astype(np.float64)
        return
    q = importance(np.asarray(scores, dtype=np.float64), floor)
    if draw == "with_replacement":
        cdf = np.cumsum(q)
        cdf[-1] = 1.0
        data[start:start + d] = q
        data[start + d:start + 2 * d] = cdf
    else:
        data[start:start + d] = water_fill(q, keep * d)
