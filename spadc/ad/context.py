"""Where adjoint code goes, how it reaches primal values, and how contributions are summed.

Invariants:
- A `Context` is one block of adjoint code. At the top level primal values are at hand; inside the
  adjoint of a region they come from that region's tape (`keep` asks the forward region to yield
  them, stacked over iterations), unless they are cheaper to recompute (`recomputable`). In the
  adjoint of a checkpointed (`remat`) loop they are at hand too: its iterations are replayed there.
- A `cond`'s branches keep their values in one record each, both in the same storage: the tape
  holds the larger branch's record, not both.
- What the tape keeps is what cannot be had again: rows of inputs and params are read again
  (`rereadable`), random masks are drawn again (`REGENERATED`), and masks are kept as bits.
- A rule reads only the primal values its record declares (`Primals`); a stored operand of a
  sampled site reads as its gated stand-in (spadc/ad/sampling.py).
- `Adjoints` sums contributions as they come; index contributions accumulate with `index_add`.
"""

from __future__ import annotations

from ..ir import primitives
from ..ir.core import Block, Op, Value
from .builder import Builder
from ..ir.types import TensorType
from . import sampling as gates
from ..ir.structure import Sparse
from .rules import Rule

RECOMPUTABLE = ("const", "add", "sub", "mul", "neg", "floordiv", "mod", "max", "min", "to_float")
# Random ops without operands: the adjoint draws them again from the same key (seed, site, iteration,
# sample, step), which costs no tape (ESTIMATORS.md section 5).
REGENERATED = ("dropout_mask",)


def rereadable(value: Value, state) -> bool:
    """A param or input, or a row, slice or element of one (`seq[t]`, `emb[token]`) at scalar
    indices: the adjoint reads it again from the caller's buffer instead of keeping it."""
    if value.id in state.external:
        return True
    op = state.producers.get(value.id)
    return (op is not None and op.kind == "index" and rereadable(op.args[0], state)
            and all(a.type.rank == 0 for a in op.args[1:]))


def as_bits(value: Value, state) -> bool:
    """A mask the tape keeps as bits (8 per byte), not as bytes."""
    return value.type.dtype == "bool" and value.type.rank > 0 and value.id not in state.external


class Context(Builder):
    """One block of adjoint code. At the top level primal values are at hand; inside the adjoint of
    a region they come from that region's tape, requested here and kept by the forward region."""

    def __init__(self, block: Block, parent: "Context | None", region: "tuple[Op, Block] | None", state,
                 index: Value | None = None):
        super().__init__(block)
        self.parent = parent
        self.state = state
        self.op_of_region, self.forward = region if region else (None, None)
        self.index = index  # this region's index in the adjoint (the same iteration as the primal's)
        self.requests: dict[int, tuple[Value, Value]] = {}  # primal id -> (primal, kept value)
        self.inserts: list[Op] = []  # ops appended to the forward block (gates, partials)
        self.defined = set()
        self.producers: dict[int, Op] = {}
        if region is not None:
            self.producers = {r.id: op for op in self.forward.ops for r in op.results}
            self.defined = {p.id for p in self.forward.params} | set(self.producers)
        self.memo: dict = {}
        self.read: dict[int, Value] = {}  # top level only: forward values the adjoint reads
        # A branch of a `cond` keeps its values in one record (spadc/ad/reverse.py, _cond_adjoint).
        self.record_values: list[Value] = []
        self.record_size = 0  # words
        self.record_view: Value | None = None
        self.snapshot_rows: list[Value] = []  # a binomial loop's: its state's rows (spadc/ad/binomial.py)

    @property
    def stacked(self) -> bool:
        return self.op_of_region is not None and self.op_of_region.kind in ("loop", "tabulate")

    @property
    def is_comprehension(self) -> bool:
        return self.op_of_region is not None and self.op_of_region.kind == "tabulate"

    @property
    def replays(self) -> bool:
        """A checkpointed loop's adjoint: each iteration runs its body again (reverse.py, `_replay`),
        so every value of the body is at hand, as at the top level."""
        return self.op_of_region is not None and self.op_of_region.attrs.get("remat", False)

    def primal(self, value: Value) -> Value:
        if value.id in self.memo:
            return self.memo[value.id]
        if self.replays and value.id in self.defined:
            return value
        op = self.producers.get(value.id)
        if op is not None and op.kind in REGENERATED:  # drawn again from its key: never on the tape
            result = Value(value.type, value.hint)
            self.block.ops.append(Op(op.kind, (), (result,), op.attrs, op.loc, op.inlined_at))
        elif rereadable(value, self.state) and value.id not in self.state.external:
            result = self._recompute(self.state.producers[value.id])  # a row of an input: read it again
        elif self.parent is None:
            if value.id not in self.state.external:
                self.state.taped.add(value.id)
            if not as_bits(value, self.state):
                self.read[value.id] = value  # the top level reads the forward's own values: they are the tape
                return value
            packed = self._pack_bits(value)
            self.read[packed.id] = packed
            result = self.op("unpack_bits", packed, shape=value.type.shape)
        elif value.id not in self.defined:
            result = self.parent.primal(value)
        elif self.forward.params and value is self.forward.params[0]:
            result = self.index
        elif self._recomputable(value):
            result = self._recompute(self.producers[value.id])
        elif as_bits(value, self.state):
            row = self._kept(self._pack_bits(value))
            result = self.op("unpack_bits", row, shape=value.type.shape)
        else:
            self.state.taped.add(value.id)
            result = self._kept(value)
        self.memo[value.id] = result
        return result

    def _kept(self, value: Value) -> Value:
        """`value` as the forward region keeps it for this context: its row, in a loop; its field
        in the branch's record, in a `cond`."""
        if self.op_of_region.kind == "cond":
            return self._field(value)
        kept = self.parent.primal(self.keep(value))
        return self.row(kept) if self.stacked else kept

    def _field(self, value: Value) -> Value:
        """Read `value` from this branch's record. The record's storage is known only once both
        branches are built (reverse.py, `_settle_record`): until then fields read a stand-in."""
        if self.record_view is None:
            self.record_view = Value(TensorType("i64", (1,)), "tape")
        offset = self.record_size
        self.record_size += primitives.record_words(value.type)
        self.record_values.append(value)
        result = Value(value.type, value.hint)
        attrs = {"offset": offset, "shape": value.type.shape, "dtype": value.type.dtype}
        self.block.ops.append(Op("field", (self.record_view,), (result,), attrs, self.loc, self.inlined_at))
        return result

    def _recompute(self, op: Op) -> Value:
        args = [self.primal(a) for a in op.args]
        result = Value(op.result.type, op.result.hint)
        self.block.ops.append(Op(op.kind, tuple(args), (result,), op.attrs, op.loc, op.inlined_at))
        return result

    def _pack_bits(self, value: Value) -> Value:
        """The forward pass packs a mask into bits where it is computed; the tape keeps the bits."""
        packed = Value(primitives.infer("pack_bits", [value.type], {}), f"{value.hint}.bits" if value.hint else "bits")
        self.inserts.append(Op("pack_bits", (value,), (packed,), {}, self.loc, self.inlined_at))
        self.defined.add(packed.id)
        return packed

    def _recomputable(self, value: Value) -> bool:
        """Cheaper to compute again in the adjoint than to keep on the tape: a scalar constant, or
        scalar arithmetic on the region's index, on other recomputable values and on outer values
        (loop-invariant, read once): index arithmetic such as `(i + 1) % N`, and literals. In a
        loop or comprehension also an element or row of an outer value, at such indices, when the
        outer value is no larger than the stack of them it replaces: `u[i]` for i in 0..N reads
        from the outer `u` (kept once by the enclosing region, if at all) instead of a stack of N
        copies, and `rate * u[i] * (1 - u[i])` then needs nothing of its own on the tape."""
        key = ("recomputable", value.id)
        if key not in self.memo:
            self.memo[key] = False  # guards against cycles while deciding
            op = self.producers.get(value.id)
            self.memo[key] = (
                (self.forward.params and value is self.forward.params[0]) or
                (op is not None and op.kind in RECOMPUTABLE and value.type.rank == 0 and
                 all(self._available(a) for a in op.args)) or
                (op is not None and op.kind == "index" and self.stacked and op.args[0].id not in self.defined
                 and op.args[0].type.size <= self._trips() * value.type.size
                 and all(self._available(a) for a in op.args[1:])))
        return bool(self.memo[key])

    def _available(self, value: Value) -> bool:
        """The adjoint can have `value` without this region keeping it."""
        return value.id not in self.defined or self._recomputable(value)

    def _trips(self) -> int:
        return self.op_of_region.attrs["hi"] - self.op_of_region.attrs["lo"]

    def cheap(self, value: Value) -> bool:
        """Whether this region's adjoint recomputes `value` rather than keeping it."""
        return value.id in self.defined and self.forward is not None and self._recomputable(value)

    def keep(self, value: Value) -> Value:
        """Have the forward region yield `value` (stacked over iterations in a loop or comprehension)."""
        if value.id not in self.requests:
            kept_type = value.type
            if self.stacked:
                lo, hi = self.op_of_region.attrs["lo"], self.op_of_region.attrs["hi"]
                kept_type = value.type.with_shape((hi - lo,) + value.type.shape)
            hint = value.hint or "tape"
            kept = Value(kept_type, hint if hint.endswith("tape") else f"{hint}.tape")
            self.requests[value.id] = (value, kept)
            self.parent.defined.add(kept.id)
        return self.requests[value.id][1]

    def row(self, stacked: Value) -> Value:
        """Row `index - lo` of a value stacked over this region's iterations."""
        rest = tuple(("slice", 0, n) for n in stacked.type.shape[1:])
        return self.op("index", stacked, self.position(), spec=(("dyn", False),) + rest, what="tape")

    def position(self) -> Value:
        lo = self.op_of_region.attrs["lo"]
        return self.index if lo == 0 else self.op("sub", self.index, self.op("const", value=lo, dtype="i64"))

    def rows(self) -> list[Value]:
        """This element's position in each enclosing comprehension up to the draw level, outermost first."""
        if not self.is_comprehension:
            return []
        return self.parent.rows() + [self.position()]


class Primals:
    """What a rule may read: the primal operands and output its record declares in `saves`; a
    stored operand of a sampled site reads as its gated stand-in."""

    def __init__(self, ctx: Context, op: Op, rule: Rule, gated_operands: dict[int, gates.SiteEntry]):
        self._ctx, self._op, self._saves, self._gated = ctx, op, rule.saves, gated_operands

    def arg(self, k: int) -> Value:
        value = self._op.args[k]
        self._ctx.state.readers.setdefault(value.id, set()).add(id(self._op))
        allowed = k in self._saves or ("indices" in self._saves and value.type.dtype == "i64")
        assert allowed, f"the adjoint of {self._op.kind} reads operand {k}, which it does not declare in saves"
        if k in self._gated:
            return gates.gated(self._ctx, self._gated[k], value)
        return self._ctx.primal(value)

    def out(self) -> Value:
        assert "out" in self._saves, f"the adjoint of {self._op.kind} reads its output without declaring it"
        self._ctx.state.readers.setdefault(self._op.result.id, set()).add(id(self._op))
        return self._ctx.primal(self._op.result)

    def derived(self, name: str, compute) -> Value:
        """A small value the forward pass computes for the adjoint (`compute` receives a forward
        emitter): a comparison's 1-byte result rather than the 8-byte floats it compares. It is
        kept on the tape instead of the operands it was computed from."""
        assert name in self._saves, f"the adjoint of {self._op.kind} derives `{name}` without declaring it"
        key = ("derived", id(self._op), name)
        if key not in self._ctx.memo:
            self._ctx.memo[key] = self._ctx.primal(compute(gates.ForwardEmitter(self._ctx, self._op)))
        return self._ctx.memo[key]


class Adjoints:
    """The adjoints of primal values within one context; contributions are summed as they come."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._values: dict[int, Value] = {}

    def get(self, value: Value) -> Value | None:
        return self._values.get(value.id)

    def set(self, value: Value, adjoint: Value):
        self._values[value.id] = adjoint

    def add(self, value: Value, contribution):
        current = self._values.get(value.id)
        if isinstance(contribution, Sparse):
            base = current if current is not None else self.ctx.zeros(value.type)
            self._values[value.id] = self.ctx.op("index_add", base, contribution.g, *contribution.indices,
                                                 spec=contribution.spec)
            return
        contribution = to_shape(self.ctx, contribution, value)
        self._values[value.id] = contribution if current is None else self.ctx.op("add", current, contribution)


def to_shape(ctx: Context, contribution: Value, operand: Value) -> Value:
    """A contribution of an elementwise op's result shape, summed for a scalar operand."""
    if contribution.type.shape != operand.type.shape:
        return ctx.op("reduce_sum", contribution, axis=None)
    return contribution
