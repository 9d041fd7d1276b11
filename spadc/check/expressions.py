"""Checking and lowering expressions: AST expressions to typed IR values.

Checking and lowering are one walk because functions are inlined with the types of each call
site: a function body has no types until it is called. Every user mistake is reported here or in
`statements`, with its position, before any IR reaches the verifier or later passes.

Invariants:
- `expr(node)` returns a `Typed` whose IR value has been emitted into the current block.
- Operands of elementwise primitives are made equal in shape (or scalar) and in dtype here:
  implicit conversions (i64 to f64) and broadcasts are explicit ops in the IR.
- Any primitive whose operands are all compile-time constants is also folded through its NumPy
  reference implementation, so constant expressions (dimensions, loop bounds) need no second
  evaluator.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spadrt import limits
from spadrt.limits import format_bytes, limit_text

from ..errors import Loc, SpadcError, did_you_mean
from ..ir import primitives
from ..ir.builder import Builder
from ..ir.core import Block, Value
from ..ir.types import I64, TensorType, broadcast_shapes
from ..syntax import ast
from . import builtins, indexing
from .typed import Affine, Binding, Typed

BUILTIN_CONSTANTS = {"pi": np.pi, "e": np.e}

# Names a Python or NumPy programmer writes, and what the language offers instead.
_PYTHON_NAMES = {
    "True": "; booleans are written `true` and `false`", "False": "; booleans are written `true` and `false`",
    "None": "; there is no `None`: every value is a number, a bool or a tensor of them",
    **{module: "; there are no modules here: NumPy's functions are builtins, as in `exp(x)` and `sum(x, axis=0)`"
       for module in ("np", "numpy", "math", "torch", "jnp")},
}
ARITHMETIC = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod", "^": "pow"}
COMPARISONS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_NOT_FOLDED = {"dropout_mask"}
_LEFT_CHAINED = ("+", "-", "*", "/", "//", "%", "@")  # the operators of the grammar's flat chains
FOLDED_ENTRIES = 1 << 20  # larger constant tensors are computed at run time, not held by the compiler
_INTEGER_OVERFLOWS = ("add", "sub", "mul", "neg", "abs", "floordiv", "reduce_sum", "reduce_prod")


def _check_no_overflow(kind: str, args, attrs, folded: np.ndarray, loc: Loc):
    """NumPy's i64 arithmetic wraps silently: fold again with Python's unbounded integers and
    compare, so that a constant that does not fit in i64 is an error, not a wrong number."""
    exact = np.asarray(primitives.PRIMITIVES[kind].evaluate([a.const.astype(object) for a in args], attrs, None),
                       dtype=object)
    wrapped = np.flatnonzero(exact.ravel() != folded.astype(object).ravel())
    if wrapped.size:
        value = exact.ravel()[wrapped[0]]
        raise SpadcError(f"integer overflow: this constant is {value}, which does not fit in i64 "
                         f"(from {-2**63} to {2**63 - 1})", loc)


class ExprChecker:
    def __init__(self, builder: Builder, env, max_memory: int | None = None):
        self.max_memory = limits.max_memory(max_memory)  # bytes; no value may need more
        self.b = builder
        self.env = env  # the ModuleEnv whose consts and fns are visible (the callee's, inside a fn)
        self.scopes: list[dict[str, Binding]] = [{}]
        self.loop_ranges: dict[int, tuple[int, int]] = {}  # loop variable id -> inclusive range
        self.conditional_depth = 0  # > 0 inside a branch of `if`: it may never run
        self.fn_stack: list[str] = []

    # ---- names -----------------------------------------------------------------

    def lookup(self, name: str) -> Binding | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def check_fresh(self, name: str, loc: Loc):
        """A new name may not reuse any visible one: shadowing hides mistakes in short programs."""
        previous = self.lookup(name)
        previous_loc = previous.loc if previous else None
        if previous_loc is None and name in self.env.consts:
            previous_loc = self.env.consts[name].loc
        if previous_loc is None and name in self.env.fns:
            previous_loc = self.env.fns[name].node.name_loc
        if previous_loc is not None:
            raise SpadcError(f"duplicate name `{name}`", loc, ((f"`{name}` was first defined here", previous_loc),))

    def var(self, node: ast.Var) -> Typed:
        binding = self.lookup(node.name)
        if binding is not None:
            return binding.typed
        if node.name in self.env.consts:
            return self.constant(self.env.consts[node.name].value, node.loc)
        if node.name in BUILTIN_CONSTANTS:
            return self.constant(BUILTIN_CONSTANTS[node.name], node.loc)
        if node.name in self.env.top_level_names:
            if self.fn_stack:
                raise SpadcError(f"`{node.name}` is not visible inside fn `{self.fn_stack[-1]}`: functions see "
                                 f"only their arguments, consts and fns; pass it as an argument", node.loc)
            raise SpadcError(f"`{node.name}` is not a constant: only consts and literals are known at compile time",
                             node.loc)
        hint = _PYTHON_NAMES.get(node.name) or did_you_mean(node.name, self.visible_names())
        raise SpadcError(f"undefined name `{node.name}`{hint}", node.loc)

    def visible_names(self) -> list[str]:
        return [n for scope in self.scopes for n in scope] + list(self.env.consts) + list(BUILTIN_CONSTANTS)

    # ---- emitting --------------------------------------------------------------

    def constant(self, value, loc: Loc) -> Typed:
        value = np.asarray(value)
        dtype = {"f": "f64", "i": "i64", "u": "i64", "b": "bool"}[value.dtype.kind]
        if value.ndim == 0:
            out = self.b.const(value.item(), dtype, loc)
            typed_value = np.asarray(value, dtype=primitives.NUMPY_DTYPES[dtype])
            affine = Affine.constant(int(value)) if dtype == "i64" else None
            return Typed(out, typed_value, affine, (int(value),) * 2 if dtype == "i64" else None)
        elements = [self.constant(v, loc) for v in value]
        return self.prim("stack", elements, loc)

    def check_fits(self, type_: TensorType, loc: Loc):
        needed = type_.size * 8
        if needed > self.max_memory:
            raise SpadcError(f"{type_} has {type_.size:,} entries ({format_bytes(needed)}): more than "
                             f"{limit_text(self.max_memory)}", loc)

    def prim(self, kind: str, args: list[Typed], loc: Loc, hint: str | None = None, **attrs) -> Typed:
        result_type = primitives.infer(kind, [a.type for a in args], attrs)
        self.check_fits(result_type, loc)
        const = None
        if (kind not in _NOT_FOLDED and all(a.is_const for a in args)
                and result_type.size <= FOLDED_ENTRIES):
            try:
                with np.errstate(all="ignore"):  # inf and NaN are values, as at run time
                    const = primitives.PRIMITIVES[kind].evaluate([a.const for a in args], attrs, None)
            except primitives.Fault as fault:
                raise SpadcError(str(fault), loc) from None
            if kind in _INTEGER_OVERFLOWS and const.dtype == np.int64:
                _check_no_overflow(kind, args, attrs, const, loc)
        if const is not None and np.ndim(const) == 0 and kind != "const":
            out = self.b.const(const.item(), result_type.dtype, loc)
        else:
            out = self.b.emit_typed(result_type, kind, [a.value for a in args], loc, hint, **attrs)
        affine, interval = _index_facts(kind, args, const, self.loop_ranges)
        return Typed(out, const, affine, interval)

    # ---- conversions and broadcasting ------------------------------------------

    def numeric(self, t: Typed, what: str, loc: Loc) -> Typed:
        if t.type.dtype == "bool":
            raise SpadcError(f"{what} needs a number, got {t.type}", loc)
        return t

    def to_float(self, t: Typed, what: str, loc: Loc) -> Typed:
        self.numeric(t, what, loc)
        return self.prim("to_float", [t], loc) if t.type.dtype == "i64" else t

    def unify_dtypes(self, a: Typed, b: Typed, what: str, loc: Loc) -> tuple[Typed, Typed]:
        """i64 with f64 becomes f64; bool mixes only with bool."""
        if a.type.dtype == b.type.dtype:
            return a, b
        if "bool" in (a.type.dtype, b.type.dtype):
            raise SpadcError(f"{what} cannot mix {a.type} and {b.type}", loc)
        return self.to_float(a, what, loc), self.to_float(b, what, loc)

    def broadcast_to(self, t: Typed, shape: tuple[int, ...], loc: Loc) -> Typed:
        if t.type.shape == shape:
            return t
        return self.prim("broadcast", [t], loc, shape=shape)

    def broadcast_all(self, operands: list[Typed], what: str, loc: Loc) -> list[Typed]:
        """NumPy broadcasting; scalars stay scalars (elementwise primitives take them as they are)."""
        shape: tuple[int, ...] = ()
        for t in operands:
            joined = broadcast_shapes(shape, t.type.shape)
            if joined is None:
                shapes = " and ".join(str(o.type) for o in operands)
                raise SpadcError(f"shapes do not match in {what}: {shapes}", loc)
            shape = joined
        return [t if t.type.rank == 0 else self.broadcast_to(t, shape, loc) for t in operands]

    # ---- expressions -----------------------------------------------------------

    def expr(self, node) -> Typed:
        return _HANDLERS[type(node)](self, node)

    def _number(self, node: ast.Number) -> Typed:
        return self.constant(node.value, node.loc)

    def _bool(self, node: ast.Bool) -> Typed:
        return self.constant(node.value, node.loc)

    def _unary(self, node: ast.Unary) -> Typed:
        operand = self.expr(node.operand)
        if node.op == "not":
            if operand.type.dtype != "bool":
                raise SpadcError(f"`not` needs bool, got {operand.type}", node.loc)
            return self.prim("not", [operand], node.loc)
        self.numeric(operand, f"unary `{node.op}`", node.loc)
        return self.prim("neg", [operand], node.loc) if node.op == "-" else operand

    def _binary(self, node: ast.Binary) -> Typed:
        # A left-associative chain (`a + b + c + ...`, any length) is walked down its left spine in a
        # loop, not by recursion; its operands are still checked left to right.
        spine = []
        while isinstance(node, ast.Binary) and node.op in _LEFT_CHAINED:
            spine.append(node)
            node = node.lhs
        if not spine:  # `^`, comparisons, and, or
            return self.binary(node.op, self.expr(node.lhs), self.expr(node.rhs), node.loc)
        value = self.expr(node)
        for link in reversed(spine):
            value = self.binary(link.op, value, self.expr(link.rhs), link.loc)
        return value

    def binary(self, op: str, lhs: Typed, rhs: Typed, loc: Loc) -> Typed:
        what = f"`{op}`"
        if op == "@":
            return builtins.matmul(self, lhs, rhs, loc)
        if op in ("and", "or"):
            if lhs.type.dtype != "bool" or rhs.type.dtype != "bool":
                raise SpadcError(f"{what} needs bool operands, got {lhs.type} and {rhs.type}", loc)
            kind = op
        elif op in COMPARISONS:
            lhs, rhs = self.unify_dtypes(lhs, rhs, what, loc)
            kind = COMPARISONS[op]
        else:
            self.numeric(lhs, what, loc)
            self.numeric(rhs, what, loc)
            if op in ("/", "^"):  # true division and powers are float operations
                lhs, rhs = self.to_float(lhs, what, loc), self.to_float(rhs, what, loc)
            else:
                lhs, rhs = self.unify_dtypes(lhs, rhs, what, loc)
            kind = ARITHMETIC[op]
        lhs, rhs = self.broadcast_all([lhs, rhs], what, loc)
        return self.prim(kind, [lhs, rhs], loc)

    def _if(self, node: ast.IfExpr) -> Typed:
        cond = self.expr(node.cond)
        if cond.type != TensorType("bool"):
            raise SpadcError(f"the condition of `if` must be a scalar bool, got {cond.type}", node.cond.loc)
        branches = []
        self.conditional_depth += 1
        try:
            for branch in (node.then, node.orelse):
                with self.b.region([]) as block:
                    branches.append((block, self.expr(branch)))
        finally:
            self.conditional_depth -= 1
        (then_block, a), (else_block, b) = branches
        if a.type != b.type:
            dtypes = {a.type.dtype, b.type.dtype}
            shape = broadcast_shapes(a.type.shape, b.type.shape)
            if shape is None or ("bool" in dtypes and len(dtypes) > 1):
                raise SpadcError(f"the branches of `if` differ: {a.type} and {b.type}", node.loc)
            dtype = "f64" if "f64" in dtypes else a.type.dtype
            a = self._conform(then_block, a, dtype, shape, node.loc)
            b = self._conform(else_block, b, dtype, shape, node.loc)
        then_block.yields, else_block.yields = [a.value], [b.value]
        (result,) = self.b.region_op("cond", [cond.value], (then_block, else_block), [a.type], node.loc)
        return Typed(result)

    def _conform(self, block: Block, t: Typed, dtype: str, shape, loc: Loc) -> Typed:
        """Convert a branch's value to the joined type, emitting into that branch's block."""
        with self.b.region([]) as scratch:
            if t.type.dtype != dtype:
                t = self.prim("to_float", [t], loc)
            t = self.broadcast_to(t, shape, loc)
        block.ops.extend(scratch.ops)
        return t

    def _call(self, node: ast.Call) -> Typed:
        if node.name in self.env.fns:
            return self.inline_call(self.env.fns[node.name], node)
        return builtins.call_builtin(self, node)

    def inline_call(self, fn_def, node: ast.Call) -> Typed:
        raise NotImplementedError  # statements.StatementChecker inlines: function bodies are statements

    def _gen_call(self, node: ast.GenCall) -> Typed:
        return builtins.reduce_generator(self, node)

    def _list(self, node: ast.ListLit) -> Typed:
        elements = [self.expr(e) for e in node.elements]
        if any(e.type.dtype == "f64" for e in elements):
            elements = [self.to_float(e, "a tensor literal", node.loc) for e in elements]
        first = elements[0].type
        for element, source in zip(elements, node.elements):
            if element.type != first:
                raise SpadcError(f"elements of a tensor literal must have one type: {first} and {element.type}",
                                 source.loc)
        return self.prim("stack", elements, node.loc)

    def _comprehension(self, node: ast.Comprehension) -> Typed:
        block, body = self.tabulate(node.var, node.var_loc, node.range, node.body)
        n = self.range_bounds(node.range)
        (result,) = self.b.region_op("tabulate", [], (block,),
                                     [body.type.with_shape((n[1] - n[0],) + body.type.shape)],
                                     node.loc, lo=n[0], hi=n[1], var=node.var)
        return Typed(result)

    def tabulate(self, var: str, var_loc: Loc, range_: ast.Range, body_node) -> tuple[Block, Typed]:
        """Elaborate `body_node` as the body of a region indexed by `var` over `range_`."""
        lo, hi = self.range_bounds(range_)
        if hi <= lo:
            raise SpadcError(f"the range {lo}..{hi} is empty: a comprehension or reduction needs "
                             f"at least one element", range_.loc)
        self.check_fresh(var, var_loc)
        index = self.loop_variable(var, lo, hi)
        with self.b.region([index.value]) as block:
            self.scopes.append({var: Binding("loopvar", index, var_loc)})
            try:
                body = self.expr(body_node)
            finally:
                self.scopes.pop()
        block.yields = [body.value]
        return block, body

    def loop_variable(self, name: str, lo: int, hi: int) -> Typed:
        value = Value(I64, name)
        if hi > lo:
            self.loop_ranges[value.id] = (lo, hi - 1)
            return Typed(value, affine=Affine.variable(value.id), interval=(lo, hi - 1))
        return Typed(value)

    def _index(self, node: ast.Index) -> Typed:
        return indexing.index(self, node)

    # ---- compile-time values ---------------------------------------------------

    def const_value(self, node, what: str):
        """Evaluate `node` at compile time, in a scratch block whose ops are dropped."""
        with self.b.region([]):
            typed = self.expr(node)
        if not typed.is_const:
            raise SpadcError(f"{what} must be known at compile time", ast.start_loc(node))
        return typed.const

    def const_int(self, node, what: str, minimum: int | None = None) -> int:
        value = self.const_value(node, what)
        if value.dtype.kind not in "iu" or value.ndim != 0:
            raise SpadcError(f"{what} must be an integer, got {value.item() if value.ndim == 0 else value}",
                             node.loc)
        value = int(value)
        if minimum is not None and value < minimum:
            raise SpadcError(f"{what} must be at least {minimum}, got {value}", node.loc)
        return value

    def const_float(self, node, what: str) -> float:
        value = self.const_value(node, what)
        if value.dtype.kind == "b" or value.ndim != 0:
            raise SpadcError(f"{what} must be a number", node.loc)
        return float(value)

    def range_bounds(self, range_: ast.Range) -> tuple[int, int]:
        return (self.const_int(range_.lo, "a range bound"), self.const_int(range_.hi, "a range bound"))


def _index_facts(kind: str, args: list[Typed], const, ranges) -> tuple[Affine | None, tuple[int, int] | None]:
    """Affine form and interval of an i64 scalar result, from those of its operands."""
    if const is not None:
        if const.dtype.kind in "iu" and const.ndim == 0:
            return Affine.constant(int(const)), (int(const), int(const))
        return None, None
    if not args or any(a.type != TensorType("i64") for a in args):
        return None, None
    forms = [a.affine for a in args]
    affine = None
    if kind in ("add", "sub") and all(forms):
        affine = forms[0].plus(forms[1], 1 if kind == "add" else -1)
    elif kind == "neg" and forms[0]:
        affine = forms[0].scaled(-1)
    elif kind == "mul" and all(forms) and (not forms[0].terms or not forms[1].terms):
        scale, form = (forms[0].offset, forms[1]) if not forms[0].terms else (forms[1].offset, forms[0])
        affine = form.scaled(scale)
    if affine is not None:
        return affine, affine.bounds(ranges)
    intervals = [a.interval for a in args]
    interval = None
    if kind in ("max", "min") and all(intervals):
        pick = max if kind == "max" else min
        interval = (pick(intervals[0][0], intervals[1][0]), pick(intervals[0][1], intervals[1][1]))
    elif kind == "mod" and args[1].is_const and int(args[1].const) > 0:
        interval = (0, int(args[1].const) - 1)
    elif kind == "floordiv" and intervals[0] and args[1].is_const and int(args[1].const) > 0:
        d = int(args[1].const)
        interval = (intervals[0][0] // d, intervals[0][1] // d)
    return None, interval


_HANDLERS: dict[type, Callable] = {
    ast.Number: ExprChecker._number,
    ast.Bool: ExprChecker._bool,
    ast.Var: ExprChecker.var,
    ast.Unary: ExprChecker._unary,
    ast.Binary: ExprChecker._binary,
    ast.IfExpr: ExprChecker._if,
    ast.Call: ExprChecker._call,
    ast.GenCall: ExprChecker._gen_call,
    ast.ListLit: ExprChecker._list,
    ast.Comprehension: ExprChecker._comprehension,
    ast.Index: ExprChecker._index,
}
