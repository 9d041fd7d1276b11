"""How a site's gate draws its entries: the NumPy reference of `gate_pack`, `gate_unpack`, `gate_mask`.

The compiled code (spadc/backend/gates.py) does the same arithmetic in the same order, so both give
the same bits. Attributes of a gate op: `d` entries, `k` draws (or d for Bernoulli), `draw`
(with_replacement | bernoulli), `scheme` (uniform | importance | fixed), `keep`, `data` (the
offset of this site's run-time data in the site-data buffer), `shape` of the whole gated tensor.

A gate over a conv's input (`channels` > 1) draws positions: entry i stands for `channels` values,
those at `value_index(i, c)` (c in channel order), and the packed buffer holds them entry by entry.

Site data (written by the runtime for SPAD): importance with replacement: q[d] then cdf[d];
importance Bernoulli: p[d]; fixed (topk): k entry indices. Uniform schemes read none.

Invariants:
- With replacement, draw j (0 <= j < k) picks entry idx_j with weight w_j: uniform:
  idx = min(floor(u_j d), d - 1), w = d / k; importance: idx = the first i with cdf[i] > u_j
  (clamped to d - 1), w = 1 / (k q[idx]); fixed: idx = data[j], w = 1. Repeated draws add up.
- Bernoulli: entry i is kept when u_i < p_i (p = keep, or data), weighted 1 / p_i; the packed
  values are the kept entries in order, the rest of the buffer zero.
- u_j is entry j of the site's stream (spadc.rng.uniform): regenerated in the backward pass.
"""

from __future__ import annotations

import numpy as np

from .. import rng
from .conv import conv_window


def with_replacement(attrs, key: rng.Stream, data) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) of the k draws."""
    d, k, scheme = attrs["d"], attrs["k"], attrs["scheme"]
    if scheme == "fixed":
        return data[attrs["data"]:attrs["data"] + k].astype(np.int64), np.ones(k)
    u = rng.uniform(key, k)
    if scheme == "uniform":
        return np.minimum((u * d).astype(np.int64), d - 1), np.full(k, d / k)
    q = data[attrs["data"]:attrs["data"] + d]
    cdf = data[attrs["data"] + d:attrs["data"] + 2 * d]
    indices = np.minimum(np.searchsorted(cdf, u, side="right"), d - 1)
    return indices, 1.0 / (k * q[indices])


def bernoulli(attrs, key: rng.Stream, data) -> tuple[np.ndarray, np.ndarray]:
    """(kept mask, weights) over the d entries."""
    d = attrs["d"]
    p = np.full(d, attrs["keep"]) if attrs["scheme"] == "uniform" else data[attrs["data"]:attrs["data"] + d]
    kept = rng.uniform(key, d) < p
    return kept, np.where(kept, 1.0 / p, 0.0)


def value_index(i, c, attrs):
    """Where value c of entry i is in the gated tensor: i itself for a gate of one value per entry; for
    a conv's input (entries are positions, `inner` per element of its stack), its channel c."""
    if attrs.get("channels", 1) == 1:
        return i
    inner = attrs["inner"]
    return (i // inner) * attrs["channels"] * inner + c * inner + i % inner


def _values(entries: np.ndarray, attrs) -> np.ndarray:
    """[len(entries), channels]: the value indices of the entries."""
    channels = attrs.get("channels", 1)
    return value_index(entries[:, None], np.arange(channels)[None, :], attrs)


def pack(value: np.ndarray, attrs, key: rng.Stream, data) -> np.ndarray:
    flat = value.reshape(-1)
    if attrs["draw"] == "with_replacement":
        indices, _ = with_replacement(attrs, key, data)
        return flat[_values(indices, attrs)].reshape(-1)
    kept, _ = bernoulli(attrs, key, data)
    channels = attrs.get("channels", 1)
    out = np.zeros(attrs["d"] * channels)
    out[:kept.sum() * channels] = flat[_values(np.flatnonzero(kept), attrs)].reshape(-1)
    return out


def stored_count(packed_attrs, key: rng.Stream, data) -> int:
    """How many values a pack actually stores: k, or the kept count of a Bernoulli draw."""
    channels = packed_attrs.get("channels", 1)
    if packed_attrs["draw"] == "with_replacement":
        return packed_attrs["k"] * channels
    return int(bernoulli(packed_attrs, key, data)[0].sum()) * channels


def unpack(packed: np.ndarray, attrs, key: rng.Stream, data) -> np.ndarray:
    channels = attrs.get("channels", 1)
    out = np.zeros(attrs["d"] * channels)
    rows = packed.reshape(-1, channels)
    if attrs["draw"] == "with_replacement":
        indices, weights = with_replacement(attrs, key, data)
        places = _values(indices, attrs)
        for j in range(attrs["k"]):  # in order: repeated draws add up exactly as compiled code does
            out[places[j]] += rows[j] * weights[j]
    else:
        kept, weights = bernoulli(attrs, key, data)
        entries = np.flatnonzero(kept)
        out[_values(entries, attrs)] = rows[:len(entries)] * weights[entries][:, None]
    return out.reshape(attrs["shape"])


def outer_add(acc: np.ndarray, a: np.ndarray, packed: np.ndarray, attrs, key: rng.Stream, data) -> np.ndarray:
    """acc + outer(a, unpack(packed)), one kept column at a time (draw by draw, as compiled code
    does): the cost is that of the kept entries, not of all d."""
    out = acc.copy()
    if attrs["draw"] == "with_replacement":
        indices, weights = with_replacement(attrs, key, data)
        for j in range(attrs["k"]):
            out[:, indices[j]] += a * (packed[j] * weights[j])
    else:
        kept, weights = bernoulli(attrs, key, data)
        for position, i in enumerate(np.flatnonzero(kept)):
            out[:, i] += a * (packed[position] * weights[i])
    return out


def _kept_entries(attrs, key: rng.Stream, data):
    """(position among the kept, entry index, weight) of each kept entry, in order."""
    if attrs["draw"] == "with_replacement":
        indices, weights = with_replacement(attrs, key, data)
        return [(j, int(indices[j]), weights[j]) for j in range(attrs["k"])]
    kept, weights = bernoulli(attrs, key, data)
    return [(position, int(i), weights[i]) for position, i in enumerate(np.flatnonzero(kept))]


def conv_weight_grad(packed: np.ndarray, g: np.ndarray, attrs, key: rng.Stream, data) -> np.ndarray:
    """conv_weight_grad(unpack(packed), g) of a conv's gated input, one kept position at a time (draw by
    draw, then kernel position by kernel position, as compiled code does): it costs what it keeps."""
    channels, spatial, kernel = attrs.get("channels", 1), tuple(attrs["shape"][1:]), tuple(attrs["kernel"])
    window, out_shape = conv_window(attrs, kernel), g.shape[1:]
    groups = attrs["groups"]
    per_in, per_out = channels // groups, g.shape[0] // groups
    total = np.zeros(kernel + (g.shape[0], per_in))  # by kernel position, then [C_out, C_in / groups]
    rows = packed.reshape(-1, channels)
    for j, index, weight in _kept_entries(attrs, key, data):
        value = rows[j] * weight
        position = np.unravel_index(index, spatial)
        for kernel_position, offset in window.offsets():
            shifted = [p + q - o for p, q, o in zip(position, window.padding, offset)]
            if any(t % s or t < 0 or t // s >= n for t, s, n in zip(shifted, window.stride, out_shape)):
                continue
            at = tuple(t // s for t, s in zip(shifted, window.stride))
            for group in range(groups):
                outs = slice(group * per_out, (group + 1) * per_out)
                total[kernel_position + (outs,)] += np.outer(g[(outs,) + at], value[group * per_in:(group + 1) * per_in])
    return np.moveaxis(total.reshape((-1,) + total.shape[-2:]), 0, -1).reshape((g.shape[0], per_in) + kernel)


def mask(attrs, key: rng.Stream, data) -> np.ndarray:
    """The weighted gate itself (draw counts times weights), for edge sites."""
    out = np.zeros(attrs["d"])
    if attrs["draw"] == "with_replacement":
        indices, weights = with_replacement(attrs, key, data)
        for j in range(attrs["k"]):
            out[indices[j]] += weights[j]
    else:
        out = bernoulli(attrs, key, data)[1]
    return out.reshape(attrs["shape"])
