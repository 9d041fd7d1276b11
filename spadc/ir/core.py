"""The IR: typed single-assignment values, operations, structured regions and the program.

Invariants (checked by `spadc.ir.verify`):
- Every `Value` is defined exactly once: as a block parameter or as the result of one op.
- A value is used only after its definition, in its own block or in a block nested inside it
  (regions capture outer values implicitly, as in MLIR).
- An op's `kind` is either a primitive of `spadc.ir.primitives.PRIMITIVES`, whose shape rule gives
  its result type, or one of the three region ops below, whose bodies are `Block`s:
    loop      `for var in lo..hi`, with carried state, like JAX's scan. args: the initial carried
              values (n of them). Region params: [index (i64), *carried]. Yields: the next carried
              values, then any per-iteration values to keep; results: the final carried values,
              then each kept value stacked over iterations (shape [hi - lo, ...]): the tape of the
              adjoint. attrs: lo, hi, var, reverse (iterate hi-1 down to lo; stacked row t - lo);
              optionally `flat` (see `flat_iteration`) and `remat` (a checkpointed loop:
              spadc/passes/checkpoint.py). A loop stays a loop: IR size does not depend on the
              trip count. A *coded* loop (attr `codes` = (base, values): a binomial schedule's,
              spadc/ad/binomial.py) runs len(values) iterations, lo = 0 and hi = len(values),
              keeps nothing stacked, and its index at iteration a is values[a], not a; its flat
              row (`flat_iteration`) is values[a] // base.
    tabulate  `[body for var in lo..hi]`. No args; region params: [index]; each yield is stacked
              along a new leading axis of length hi - lo (the first is the comprehension's value,
              any others are tapes). attrs: lo, hi, var.
    cond      `if c then a else b`. args: (c,), a scalar bool; regions (then, else), no params,
              yielding values of the result types. Only the chosen region is evaluated. attr
              `uniform`: every sample of a batch takes the same branch (a binomial schedule's
              actions: spadc/ad/binomial.py), which lets a kernel of several lanes run it once.
- IR is never mutated after it is built; passes build new blocks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ..errors import Loc
from .types import TensorType

REGION_OPS = ("loop", "tabulate", "cond")

_ids = itertools.count()


class Value:
    """An SSA value. `hint` is the source name it came from (for printing), or None."""

    __slots__ = ("type", "hint", "id")

    def __init__(self, type: TensorType, hint: str | None = None):
        self.type = type
        self.hint = hint
        self.id = next(_ids)

    def __repr__(self) -> str:
        return f"Value({self.hint or ''}#{self.id}: {self.type})"


@dataclass(eq=False)
class Block:
    params: list[Value] = field(default_factory=list)
    ops: list["Op"] = field(default_factory=list)
    yields: list[Value] = field(default_factory=list)


@dataclass(eq=False)
class Op:
    kind: str
    args: tuple[Value, ...]
    results: tuple[Value, ...]
    attrs: dict[str, Any]
    loc: Loc
    # The call sites this op was inlined through, outermost first: part of its site id.
    inlined_at: tuple[Loc, ...] = ()
    regions: tuple[Block, ...] = ()

    @property
    def result(self) -> Value:
        assert len(self.results) == 1, self.kind
        return self.results[0]


@dataclass(frozen=True)
class InitSpec:
    """How a parameter is initialised: `value` (an array broadcast to its shape) or a distribution."""
    kind: str  # 'value' | 'normal' | 'uniform' | 'glorot'
    args: tuple[Any, ...] = ()


@dataclass(eq=False)
class ParamDecl:
    name: str
    value: Value
    init: InitSpec
    bounds: tuple[float, float] | None
    loc: Loc


@dataclass(eq=False)
class InputDecl:
    name: str
    value: Value
    loc: Loc


@dataclass(eq=False)
class StateDecl:
    """`state name: T = init` (1.1): `value` is the incoming state (an input of the program), its
    final value is the output STATE_OUTPUT + name, and `init` (broadcast to the type) starts an episode."""
    name: str
    value: Value
    init: Any
    loc: Loc


STATE_OUTPUT = "_state."  # prefix of the hidden outputs that carry states out


@dataclass(eq=False)
class Program:
    """A checked model. `body.params` are the param values then the input values, in declaration order."""
    name: str
    params: list[ParamDecl]
    inputs: list[InputDecl]
    body: Block
    outputs: dict[str, Value]
    loss: Value
    # (logits, label) when the loss is `cross_entropy(logits, label)`: accuracy can then be reported.
    classifier: tuple[Value, Value] | None = None
    files: tuple[str, ...] = ()  # absolute paths of the files it imports (what a compile cache checks)
    states: tuple[StateDecl, ...] = ()  # their incoming values are among the inputs
    # ("cross_entropy", logits) or ("mse", a - b) when the loss is one of them as a whole: the outer
    # function whose Hessian a Gauss-Newton product uses (spadc/ad/forward.py).
    head: tuple[str, Value] | None = None

    def with_body(self, body: Block, outputs: dict[str, Value], loss: Value, classifier) -> "Program":
        return Program(self.name, self.params, self.inputs, body, outputs, loss, classifier, self.files, self.states,
                       self.head)


def flat_iteration(op: Op) -> tuple[int, int, int]:
    """(multiplier, stride, offset): inside `op` at row `r` (0-based), the flat iteration that keys
    random draws (spadc/rng.py) is `outer * multiplier + offset + r * stride`. By default
    (trips, 1, 0): the flat index of the enclosing loop and comprehension indices. A checkpointed
    loop cut into segments sets it so that every step keeps the key it had uncut."""
    return op.attrs.get("flat") or (op.attrs["hi"] - op.attrs["lo"], 1, 0)


def loop_index(op: Op, row: int) -> tuple[int, int]:
    """(index, flat row) of a loop's iteration `row` (0-based, in the order it runs): lo + row, and
    row, but for a coded loop (see the module's docstring)."""
    if "codes" in op.attrs:
        base, values = op.attrs["codes"]
        return values[row], values[row] // base
    return op.attrs["lo"] + row, row


def copy_block(block: Block, mapping: dict[int, Value] | None = None) -> Block:
    """A copy of `block` with fresh values for everything it defines, nested regions included;
    values it reads from outside stay as they are unless `mapping` (value id -> value) renames
    them. `mapping` is filled with the copies (original id -> copy)."""
    mapping = {} if mapping is None else mapping

    def fresh(value: Value) -> Value:
        mapping[value.id] = Value(value.type, value.hint)
        return mapping[value.id]

    def read(value: Value) -> Value:
        return mapping.get(value.id, value)

    def copy(b: Block) -> Block:
        params = [fresh(p) for p in b.params]
        ops = []
        for op in b.ops:
            args = tuple(read(a) for a in op.args)
            regions = tuple(copy(region) for region in op.regions)
            ops.append(Op(op.kind, args, tuple(fresh(r) for r in op.results), dict(op.attrs), op.loc,
                          op.inlined_at, regions))
        return Block(params, ops, [read(y) for y in b.yields])

    return copy(block)


def walk_ops(block: Block):
    """Every op of a block and of the regions nested in it, parents before children."""
    for op in block.ops:
        yield op
        for region in op.regions:
            yield from walk_ops(region)


def reads(op: Op) -> set[int]:
    """The values `op` reads from outside itself (its operands, and what its regions capture)."""
    read = {a.id for a in op.args}
    for region in op.regions:
        inside = {p.id for p in region.params}
        for inner in region.ops:
            read |= reads(inner) - inside
            inside |= {r.id for r in inner.results}
        read |= {y.id for y in region.yields} - inside
    return read


def count_ops(block: Block) -> int:
    return sum(1 for _ in walk_ops(block))
