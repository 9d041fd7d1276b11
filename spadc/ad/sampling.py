"""Path sampling in the adjoint driver: gates at sites, and SPAD's scores (ESTIMATORS.md sections 2-4).

The driver (reverse.py) asks this module, at each site:
- `gated(ctx, entry, value)`: a stand-in for a stored tensor that keeps only the drawn entries,
  reweighted so that its expectation is the tensor. At the site's draw level the forward pass packs
  the drawn entries (`gate_pack`: only they reach the tape) and the adjoint unpacks them
  (`gate_unpack`); inside comprehensions the whole stacked tensor is packed once and each element
  reads its row, unless the adjoint recomputes the element: then it is the element times its
  entry of the weighted gate (what unpacking its pack would give), and nothing is kept.
- `mask(ctx, entry)`: the weighted gate itself, for edge sites (no tape involved).
- `partial(ctx, op, k)`: the elementwise partial of edge k, computed in the forward pass from the
  adjoint rule applied to ones (for primitives whose adjoint is `g * partial`).
- `score(ctx, entry, values)`: adds |values| to the site's scores (SPAD evaluation steps); for
  `score="paths"` also the weights of the draws that kept each entry (`scores_of`).

Invariants:
- Keys: a gate's stream is keyed by the site id and the run-time iteration of its draw level, so
  pack and unpack (forward and adjoint) draw the same entries; the adjoint never draws fresh ones.
- Params, inputs and their rows are never packed: their gated stand-in is made in the adjoint
  directly, from the entries read again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import primitives
from ..ir.core import Op, Value
from ..ir.types import F64
from .context import rereadable
from .sites import Site


@dataclass(frozen=True)
class SiteEntry:
    """A site with its place in the run-time buffers."""
    site: Site
    k: int  # values kept per draw (k draws with replacement; d, the capacity, for Bernoulli)
    data_offset: int  # of this site's SPAD data in the site-data buffer (-1: none)
    data_size: int
    score_offset: int  # of this site's scores in the scores buffer (-1: no scores)

    def attrs(self, sampling, kept: bool = True, forward_scores: bool = False) -> dict:
        site = self.site
        attrs = dict(site=site.id, d=site.size, k=self.k, draw=sampling.draw, scheme=sampling.scheme,
                     keep=sampling.keep, share=sampling.share, data=self.data_offset, shape=site.shape,
                     kept=kept, scores=self.score_offset if forward_scores else -1)
        if site.value_shape is not None:  # a conv input: entries of `channels` values (ir/draws.py: value_index)
            attrs.update(shape=site.value_shape, channels=site.channels, inner=math.prod(site.op.args[0].type.shape[1:]))
        return attrs


def score_width(score: str | None) -> int:
    """Score doubles per site entry: none; |contribution|; or, for `paths`, |contribution| summed
    over the draws that kept the entry and, after all sites' sums, the weights of those draws."""
    return {None: 0, "paths": 2}.get(score, 1)


def layout_sites(sites: list[Site], sampling, score: str | None) -> list[SiteEntry]:
    """Offsets of each site's data and scores, in program order (for `paths`, every site's
    weights follow at `score_offset + d`)."""
    width = score_width(score)
    entries, data, scores = [], 0, 0
    for site in sites:
        d = site.size
        k = sampling.count(d) if sampling else d
        size = 0
        if sampling and sampling.scheme == "importance":
            size = 2 * d if sampling.draw == "with_replacement" else d
        elif sampling and sampling.scheme == "fixed":
            size = k
        entries.append(SiteEntry(site, k, data if size else -1, size, scores if width else -1))
        data += size
        scores += d * width
    return entries


def gated(ctx, entry: SiteEntry, value: Value) -> Value:
    """The gated stand-in for `value` (the site's stored tensor, per element) in context `ctx`."""
    key = ("gated", entry.site.id)
    if key in ctx.memo:
        return ctx.memo[key]
    if ctx.is_comprehension and (ctx.cheap(value) or rereadable(value, ctx.state)) and ctx.state.score != "forward":
        # recomputed or read again in the adjoint: gated there, entry by entry, with nothing kept
        result = ctx.op("mul", ctx.primal(value), _over_channels(ctx, mask(ctx, entry), value))
    elif ctx.is_comprehension:
        whole = gated(ctx.parent, entry, ctx.keep(value))  # stacked, not read by the adjoint
        result = ctx.row(whole)
    else:
        result = _pack_and_unpack(ctx, entry, value)
    ctx.memo[key] = result
    return result


def _pack_and_unpack(ctx, entry: SiteEntry, value: Value) -> Value:
    state = ctx.state
    forward_scores = state.score == "forward"
    if rereadable(value, state):  # params, inputs and their rows: nothing to keep, gate them in the adjoint
        attrs = entry.attrs(state.sampling, kept=False, forward_scores=forward_scores)
        return ctx.op("gate_unpack", ctx.op("gate_pack", ctx.primal(value), **attrs), **attrs)
    attrs = entry.attrs(state.sampling, kept=True, forward_scores=forward_scores)
    if ctx.op_of_region is not None and ctx.op_of_region.kind == "cond":
        attrs["counted"] = False  # it goes into the branch's record, which the tape counts instead
    packed = Value(F64.with_shape((entry.k * entry.site.channels,)), f"{value.hint}.kept" if value.hint else "kept")
    ctx.inserts.append(Op("gate_pack", (value,), (packed,), attrs, entry.site.loc, entry.site.op.inlined_at))
    ctx.defined.add(packed.id)
    return ctx.op("gate_unpack", ctx.primal(packed), **entry.attrs(state.sampling, kept=True))


def _over_channels(ctx, weights: Value, value: Value) -> Value:
    """A conv input's gate (one weight per position, [*S]) spread over the channels of `value` ([C, *S])."""
    if weights.type.shape == value.type.shape:
        return weights
    single = ctx.op("reshape", weights, shape=(1,) + weights.type.shape)
    return ctx.op("broadcast", single, shape=value.type.shape)


def mask(ctx, entry: SiteEntry) -> Value:
    key = ("mask", entry.site.id)
    if key not in ctx.memo:
        if ctx.is_comprehension:
            ctx.memo[key] = ctx.row(mask(ctx.parent, entry))
        else:
            attrs = {name: value for name, value in entry.attrs(ctx.state.sampling, kept=False).items()
                     if name not in ("channels", "inner")}  # a weight per entry, positions for a conv's input
            ctx.memo[key] = ctx.op("gate_mask", **{**attrs, "shape": entry.site.shape})
    return ctx.memo[key]


def partial(ctx, op: Op, k: int, rule) -> Value:
    """The partial of edge k, computed in the forward pass (the rule applied to ones)."""
    forward = ForwardEmitter(ctx, op)
    ones = forward.op("broadcast", forward.const(1.0), shape=op.result.type.shape) if op.result.type.shape \
        else forward.const(1.0)
    wanted = [j == k for j in range(len(op.args))]
    return rule.fn(forward, op, ones, wanted, forward)[k]


class ForwardEmitter:
    """Emits ops into a context's forward block (appended at its end), reading primal values directly."""

    def __init__(self, ctx, op: Op):
        self._ctx, self._op = ctx, op

    def op(self, kind: str, *args: Value, **attrs) -> Value:
        result = Value(primitives.infer(kind, [a.type for a in args], attrs))
        self._ctx.inserts.append(Op(kind, tuple(args), (result,), attrs, self._op.loc, self._op.inlined_at))
        self._ctx.defined.add(result.id)
        return result

    def const(self, value: float) -> Value:
        return self.op("const", value=float(value), dtype="f64")

    def arg(self, k: int) -> Value:  # the rule's view of primal values: in the forward pass they are at hand
        return self._op.args[k]

    def out(self) -> Value:
        return self._op.result

    def derived(self, name: str, compute) -> Value:  # in the forward pass, computed where it is needed
        return compute(self)


def score(ctx, entry: SiteEntry, values: Value, weights: bool = False):
    """score_add of |values| at this element's row of the site's scores (of its weights, for
    `paths`, with `weights`)."""
    positions = ctx.rows()  # one per enclosing comprehension, outermost first
    shape = entry.site.shape
    assert values.type.shape == shape[len(positions):], (values.type, shape)
    strides = tuple(math.prod(shape[level + 1:]) for level in range(len(positions)))
    offset = entry.score_offset + (entry.site.size if weights else 0)
    ctx.op("score_add", values, *positions, offset=offset, strides=strides)


def scores_of(ctx, entry: SiteEntry, contribution: Value, score_kind: str):
    """Add a site's scores for an evaluation step. `gradient`: the exact contribution through each
    entry; `paths`: the contribution through each drawn entry, with the weights of its draws, so
    the runtime can take the mean of what was observed."""
    score(ctx, entry, contribution)
    if score_kind == "paths":
        score(ctx, entry, mask(ctx, entry), weights=True)


def operand_score(ctx, op: Op, k: int, g: Value, stored: Value) -> Value:
    """How much of the gradient of operand k flows through each entry of the stored operand:
    the L1 norm of that entry's part of the exact contribution."""
    magnitude = ctx.op("abs", stored)
    g_magnitude = ctx.op("abs", g)
    if op.kind == "mul":
        if stored.type.shape == op.result.type.shape:
            return ctx.op("mul", magnitude, g_magnitude)
        return ctx.op("mul", magnitude, ctx.op("reduce_sum", g_magnitude, axis=None))
    if op.kind == "outer":  # edge a stores b: column sums of |g|; edge b stores a: row sums
        return ctx.op("mul", magnitude, ctx.op("reduce_sum", g_magnitude, axis=0 if k == 0 else 1))
    if op.kind == "conv":  # a position's |x| over its channels times all of |g| (not only its window's: simpler, and
        # the ranking is by the inputs, which is what differs between positions)
        total = ctx.op("reduce_sum", g_magnitude, axis=None)
        return ctx.op("mul", ctx.op("reduce_sum", magnitude, axis=0), total)
    a, b = op.args
    if a.type.rank == 2 and b.type.rank == 2:
        if k == 0:  # dA = g B^T: entry B[j, n] carries g[:, n]
            sums = ctx.op("reshape", ctx.op("reduce_sum", g_magnitude, axis=0), shape=(1, b.type.shape[1]))
        else:  # dB = A^T g: entry A[m, j] carries g[m, :]
            sums = ctx.op("reshape", ctx.op("reduce_sum", g_magnitude, axis=1), shape=(a.type.shape[0], 1))
        return ctx.op("mul", magnitude, ctx.op("broadcast", sums, shape=stored.type.shape))
    # matrix-vector, vector-matrix, dot: each stored entry carries all of g
    total = ctx.op("reduce_sum", g_magnitude, axis=None) if g.type.rank else g_magnitude
    return ctx.op("mul", magnitude, total)
