"""The abstract syntax tree of a .spad file.

Invariants:
- Nodes are frozen dataclasses and carry the `Loc` of their first token. Declarations also carry
  `name_loc`, where duplicate-name and undefined-name errors point.
- The tree says only what was written: nothing here is resolved, typed or checked. Meaning is the
  checker's job (spadc/check/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import Loc


# ---- expressions ---------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    value: int | float
    loc: Loc


@dataclass(frozen=True)
class Bool:
    value: bool
    loc: Loc


@dataclass(frozen=True)
class Var:
    name: str
    loc: Loc


@dataclass(frozen=True)
class Unary:
    op: str  # '-', '+', 'not'
    operand: "Expr"
    loc: Loc


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % @ ^ < <= > >= == != and or
    lhs: "Expr"
    rhs: "Expr"
    loc: Loc  # the operator's position: where shape errors point


@dataclass(frozen=True)
class IfExpr:
    cond: "Expr"
    then: "Expr"
    orelse: "Expr"
    loc: Loc


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    loc: Loc


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    loc: Loc


@dataclass(frozen=True)
class Range:
    lo: "Expr"
    hi: "Expr"
    loc: Loc


@dataclass(frozen=True)
class GenCall:
    """`sum(body for var in lo..hi)`: a reduction over a generator."""
    name: str
    body: "Expr"
    var: str
    var_loc: Loc
    range: Range
    loc: Loc


@dataclass(frozen=True)
class ListLit:
    elements: tuple["Expr", ...]
    loc: Loc


@dataclass(frozen=True)
class Comprehension:
    """`[body for var in lo..hi]`."""
    body: "Expr"
    var: str
    var_loc: Loc
    range: Range
    loc: Loc


@dataclass(frozen=True)
class Slice:
    lo: "Expr | None"
    hi: "Expr | None"
    loc: Loc


@dataclass(frozen=True)
class Index:
    base: "Expr"
    items: tuple[Union["Expr", Slice], ...]
    loc: Loc  # where the indexed expression starts


Expr = Union[Number, Bool, Var, Unary, Binary, IfExpr, Call, GenCall, ListLit, Comprehension, Index]


def start_loc(node) -> Loc:
    """Where an expression's text begins (a binary node's own `loc` is its operator)."""
    while isinstance(node, Binary):
        node = node.lhs
    return node.loc


# ---- types ---------------------------------------------------------------------

@dataclass(frozen=True)
class TypeExpr:
    elem: str
    dims: tuple[Expr, ...]
    loc: Loc


# ---- declarations and statements -----------------------------------------------

@dataclass(frozen=True)
class Const:
    name: str
    value: Expr
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Input:
    name: str
    type: TypeExpr
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class State:
    """`state s: T = init` (1.1): per-sample state carried from one call to the next."""
    name: str
    type: TypeExpr
    init: "Expr | None"
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class InitValue:
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class InitDist:
    dist: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]
    loc: Loc


@dataclass(frozen=True)
class Param:
    name: str
    type: TypeExpr
    bounds: tuple[Expr, Expr] | None
    init: InitValue | InitDist | None
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class FnParam:
    name: str
    type: TypeExpr | None
    loc: Loc


@dataclass(frozen=True)
class Fn:
    name: str
    params: tuple[FnParam, ...]
    ret: TypeExpr | tuple[TypeExpr, ...] | None  # a tuple for a fn that returns several values
    body: tuple["Stmt", ...]  # for `= expr` functions: a single Return
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Import:
    path: str
    loc: Loc


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Update:
    """`x[i, a:b] = e` (or `+= e`): `x` rebound to a copy with those entries replaced (increased)."""
    name: str
    items: tuple["Expr | Slice", ...]
    value: Expr
    add: bool
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class For:
    var: str
    range: Range
    body: tuple["Stmt", ...]
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class While:
    """`while cond max N { body }`: the body while `cond` holds, at most N times (an error if it still holds)."""
    cond: Expr
    limit: Expr
    body: tuple["Stmt", ...]
    loc: Loc


@dataclass(frozen=True)
class Output:
    name: str
    value: Expr
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class Loss:
    value: Expr
    loc: Loc


@dataclass(frozen=True)
class Return:
    value: Expr  # several values (`return h, c`): a TupleExpr
    loc: Loc


@dataclass(frozen=True)
class TupleExpr:
    """`h, c` after `return`: the values of a fn that returns several. Tuples exist only to be unpacked."""
    items: tuple[Expr, ...]
    loc: Loc


@dataclass(frozen=True)
class Unpack:
    """`let h, c = cell(...)` (declare) or `h, c = cell(...)` (rebinding): one name per value."""
    names: tuple[str, ...]
    value: Expr
    loc: Loc
    name_locs: tuple[Loc, ...]
    declare: bool


Stmt = Union[Const, Input, State, Param, Fn, Import, Let, Assign, Unpack, Update, For, While, Output, Loss, Return]


@dataclass(frozen=True)
class Module:
    """One parsed file."""
    statements: tuple[Stmt, ...]
    path: str
