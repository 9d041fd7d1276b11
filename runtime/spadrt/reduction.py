"""How per-chunk vectors (a batch's chunk gradients, an ES population's block sums) are added up:
one fixed binary tree over the chunks, whatever computes them.

Invariants:
- The tree depends only on the number of leaves: node [lo, hi) with more than one leaf is
  [lo, mid) + [mid, hi), mid = lo + the largest power of two below hi - lo. So threads, processes
  or machines that each hold some of the leaves give the same bits as one that holds them all.
- A worker holding a contiguous run of leaves sends the sums of `nodes_within` that run (at most
  two per level of the tree, not one per leaf); whoever holds every node's sum finishes the tree
  with `tree_sum`, adding the very same pairs in the very same order.
- Sums are made in place, into the left child's buffer (when it is writable): the leaves given
  are consumed.
"""

from __future__ import annotations

import numpy as np


def _middle(lo: int, hi: int) -> int:
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def tree_sum(lo: int, hi: int, known: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """The sum of leaves lo..hi-1: `known` holds every leaf (k, k+1), or the sum of a node that
    covers some of them (what `nodes_within` gave a worker)."""
    found = known.get((lo, hi))
    if found is not None:
        return found
    if hi - lo < 2:
        raise KeyError(f"no value for leaf {lo}")
    middle = _middle(lo, hi)
    left, right = tree_sum(lo, middle, known), tree_sum(middle, hi, known)
    return np.add(left, right, out=left if left.flags.writeable else None)  # (a sum received may be read-only)


def nodes_within(first: int, last: int, count: int) -> list[tuple[int, int]]:
    """The largest nodes of the tree over `count` leaves that lie within leaves first..last-1, in order."""
    def visit(lo: int, hi: int) -> list[tuple[int, int]]:
        if hi <= first or last <= lo:
            return []
        if first <= lo and hi <= last:
            return [(lo, hi)]
        middle = _middle(lo, hi)
        return visit(lo, middle) + visit(middle, hi)
    return visit(0, count)


def node_sums(first: int, leaves: list[np.ndarray], count: int) -> dict[tuple[int, int], np.ndarray]:
    """The sums of `nodes_within` leaves first..first+len(leaves)-1 (of a tree over `count`)."""
    known = {(first + k, first + k + 1): leaf for k, leaf in enumerate(leaves)}
    return {node: tree_sum(*node, known) for node in nodes_within(first, first + len(leaves), count)}


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """Leaves 0..count-1 as at most `parts` contiguous, nearly equal runs (none empty)."""
    parts = max(1, min(parts, count))
    return [(k * count // parts, (k + 1) * count // parts) for k in range(parts)]
