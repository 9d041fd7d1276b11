"""Adjoints that keep index contributions to outer values as entries and indices.

A region's adjoint that reads an outer value by index (a param's entry `P[k, j]` in a `cond`
branch, `u[(i + 1) % N]` in a comprehension's element) gets `Sparse` contributions. They are kept as
they come, not summed into a tensor of the value's size, so that the region yields the entries and
their indices and the outer adjoint adds them where they belong: a branch's or an element's adjoint
costs what it reads, not the size of the value (issue 22: 570x before).

Invariants:
- A value's contributions stay sparse until a dense one arrives or its adjoint is read; then they
  are summed into one dense adjoint, in the order they came. Contributions at the same index
  values (the same `Value`s, as `u[i]` read twice gives) are one part, their entries summed.
- `sparse_slots` gives every region of a set (a cond's branches) the same slots: as many per value
  and spec as the region that makes the most; a region with fewer yields zeros at index 0.
"""

from __future__ import annotations

from ..ir.core import Value
from ..ir.structure import Sparse
from ..ir.types import TensorType
from .context import Adjoints, Context


class SparseAdjoints(Adjoints):
    """The adjoints of one region (a cond branch, a comprehension's element); `outer`: ids of the
    values from outside it whose index contributions stay sparse."""

    def __init__(self, ctx: Context, outer: set[int]):
        super().__init__(ctx)
        self._outer = outer
        self._sparse: dict[int, list[Sparse]] = {}

    def add(self, value: Value, contribution):
        if value.id in self._outer and isinstance(contribution, Sparse) and super().get(value) is None:
            parts = self._sparse.setdefault(value.id, [])
            for k, part in enumerate(parts):  # the same entries again (`u[i]` read twice): one part
                if part.spec == contribution.spec and all(a is b for a, b in zip(part.indices, contribution.indices)):
                    parts[k] = Sparse(self.ctx.op("add", part.g, contribution.g), part.spec, part.indices)
                    return
            parts.append(contribution)
            return
        self._densify(value)
        super().add(value, contribution)

    def get(self, value: Value) -> Value | None:
        self._densify(value)
        return super().get(value)

    def set(self, value: Value, adjoint: Value):
        self._sparse.pop(value.id, None)  # a nested region's result already includes what get() gave it
        super().set(value, adjoint)

    def is_dense(self, value: Value) -> bool:
        return super().get(value) is not None

    def specs(self, value: Value) -> list[tuple]:
        return [s.spec for s in self._sparse.get(value.id, ())]

    def parts(self, value: Value, spec) -> list[Sparse]:
        return [s for s in self._sparse.get(value.id, ()) if s.spec == spec]

    def slot_yields(self, value: Value, spec, position: int, g_type) -> list[Value]:
        """The entries and indices of this branch's `position`-th contribution of `spec` to `value`;
        zeros at index 0 where it has fewer (adding zeros changes nothing)."""
        parts = self.parts(value, spec)
        if position < len(parts):
            return [parts[position].g, *parts[position].indices]
        index = TensorType("i64", ())
        return [self.ctx.zeros(g_type)] + [self.ctx.zeros(index) for kind, *_ in spec if kind == "dyn"]

    def _densify(self, value: Value):
        for contribution in self._sparse.pop(value.id, ()):
            super().add(value, contribution)


def sparse_slots(values: list[Value], branch_adjoints: list[SparseAdjoints]) -> list[tuple]:
    """(value, spec, position, entries' type) for each sparse contribution some branch makes: as
    many per value and spec as the branch that makes the most."""
    slots = []
    for value in values:
        specs = list(dict.fromkeys(spec for local in branch_adjoints for spec in local.specs(value)))
        for spec in specs:
            parts = [local.parts(value, spec) for local in branch_adjoints]
            g_type = next(p[0].g.type for p in parts if p)
            slots += [(value, spec, k, g_type) for k in range(max(len(p) for p in parts))]
    return slots
