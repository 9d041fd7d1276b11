"""Checking and lowering statements, and inlining function calls.

Invariants:
- Names live in nested scopes; all top-level names of a file (consts, fns, inputs, params, lets,
  outputs) share one namespace, and a `let` may not reuse any visible name.
- `x = e` rebinds a visible `let` without changing its type or shape (an i64 value may rebind an
  f64 `let`: it is converted). Inside a `for`, a rebound outer `let` becomes loop-carried state.
- `output`, `loss` and declarations appear only at the top level; `return` only as the last
  statement of a function.
- A function call is inlined: its body is checked with the argument types of that call site, in
  the scope of its own file (its consts and fns, never the caller's variables).
"""

from __future__ import annotations


from ..errors import Loc, SpadcError
from ..ir.core import Value
from ..ir import primitives
from ..ir.types import BOOL, DTYPES, I64, TensorType, broadcast_shapes
from ..syntax import ast
from . import indexing
from .expressions import ExprChecker
from .typed import Binding, Typed

_DECLARATIONS = (ast.Const, ast.Input, ast.State, ast.Param, ast.Fn, ast.Import)
_KIND_WORDS = {"const": "a const", "input": "an input", "state": "a state", "param": "a param", "output": "an output",
               "loopvar": "a loop variable", "arg": "a function argument"}


MAX_RANK = 32  # NumPy 1.x's limit on array dimensions (2.x allows 64)


class StatementChecker(ExprChecker):
    def __init__(self, builder, env, max_memory: int | None = None):
        super().__init__(builder, env, max_memory)
        self.last_head = None  # (kind, z, result) of the last cross_entropy or mse: a candidate loss head
        self.last_label = None  # (scores, label) of the last cross_entropy, or mse against a onehot label
        self.onehot_labels: dict[int, Typed] = {}  # value id of onehot(label, n) -> label

    # ---- names -----------------------------------------------------------------

    def declare(self, name: str, kind: str, typed: Typed, name_loc: Loc) -> Binding:
        self.check_fresh(name, name_loc)
        if typed.value.hint is None:
            typed.value.hint = name
        binding = Binding(kind, typed, name_loc)
        self.scopes[-1][name] = binding
        return binding

    def resolve_type(self, t: ast.TypeExpr) -> TensorType:
        if t.elem not in DTYPES:
            hint = (" (f32 is chosen for a whole program by a compile option; declare f64)"
                    if t.elem == "f32" else " (expected f64, i64 or bool)")
            raise SpadcError(f"unknown type `{t.elem}`{hint}", t.loc)
        if len(t.dims) > MAX_RANK:
            raise SpadcError(f"a type may have at most {MAX_RANK} dimensions, got {len(t.dims)}", t.loc)
        type_ = TensorType(t.elem, tuple(self.const_int(d, "a dimension", minimum=1) for d in t.dims))
        self.check_fits(type_, t.loc)
        return type_

    # ---- statements inside blocks ----------------------------------------------

    def block_statements(self, statements, where: str):
        """Statements of a `for` body or a function body (`where` names it in messages)."""
        for stmt in statements:
            handler = _BLOCK_HANDLERS.get(type(stmt))
            if handler is None:
                raise SpadcError(f"{_statement_word(stmt)} is not allowed inside {where}", stmt.loc)
            handler(self, stmt)

    def let(self, stmt: ast.Let):
        self.declare(stmt.name, "let", self.expr(stmt.value), stmt.name_loc)

    def assign(self, stmt: ast.Assign):
        self._rebind(stmt.name, stmt.name_loc, self.expr(stmt.value), stmt.loc)

    def unpack(self, stmt: ast.Unpack):
        """`let h, c = cell(...)` or `h, c = cell(...)`: a fn's several values, one name each."""
        call = stmt.value
        if not isinstance(call, ast.Call) or call.name not in self.env.fns:
            raise SpadcError(f"only the call of a fn that returns several values can be unpacked into "
                             f"{len(stmt.names)} names", ast.start_loc(call))
        values = self.inline_call(self.env.fns[call.name], call, len(stmt.names))
        for name, name_loc, value in zip(stmt.names, stmt.name_locs, values):
            if stmt.declare:
                self.declare(name, "let", value, name_loc)
            else:
                self._rebind(name, name_loc, value, stmt.loc)

    def update(self, stmt: ast.Update):
        """`x[i, a:b] = e` and `x[...] += e`: x rebound to a new value (value semantics: whatever else
        holds the old one keeps it); `e` is broadcast to the entries it replaces (or increases)."""
        binding = self.lookup(stmt.name)
        if binding is None or not binding.assignable:
            self._rebind(stmt.name, stmt.name_loc, None, stmt.loc)  # the message says why not
        old = binding.typed
        if old.type.rank == 0:
            raise SpadcError(f"`{stmt.name}` is a scalar: rebind it with `{stmt.name} = ...`", stmt.name_loc)
        spec, dynamic = indexing.index_spec(self, old, stmt.items, f"`{stmt.name}`", stmt.loc)
        region = primitives.infer("index", [old.type] + [d.type for d in dynamic], {"spec": spec})
        value = self.expr(stmt.value)
        if old.type.dtype == "f64":
            value = self.to_float(value, f"the new entries of `{stmt.name}`", ast.start_loc(stmt.value))
        if value.type.dtype != old.type.dtype or broadcast_shapes(value.type.shape, region.shape) != region.shape:
            raise SpadcError(f"the entries of `{stmt.name}` updated are {region} but the new value is {value.type}",
                             ast.start_loc(stmt.value))
        value = self.broadcast_to(value, region.shape, stmt.loc)
        kind = "index_add" if stmt.add else "index_set"
        self._rebind(stmt.name, stmt.name_loc, self.prim(kind, [old, value, *dynamic], stmt.loc, spec=spec,
                                                          what=f"`{stmt.name}`"), stmt.loc)

    def _rebind(self, name: str, name_loc: Loc, new: Typed, loc: Loc):
        binding = self.lookup(name)
        if binding is None:
            if name in self.env.consts:
                raise SpadcError(f"cannot assign to const `{name}`", name_loc)
            raise SpadcError(f"`{name}` is not declared; declare it with `let {name} = ...`", name_loc)
        if not binding.assignable:
            raise SpadcError(f"cannot assign to `{name}`: it is {_KIND_WORDS[binding.kind]}", name_loc)
        old_type = binding.typed.type
        if old_type.dtype == "f64" and new.type.dtype == "i64" and new.type.shape == old_type.shape:
            new = self.prim("to_float", [new], loc)
        if new.type != old_type:
            hint = f"; declare it as `let {name} = 0.0`" if (old_type.dtype, new.type.dtype) == ("i64", "f64") else ""
            raise SpadcError(f"`{name}` is {old_type} but the new value is {new.type}: a rebinding keeps its "
                             f"type and shape{hint}", loc)
        if new.value.hint is None:
            new.value.hint = name
        binding.typed = new

    def for_loop(self, stmt: ast.For):
        lo, hi = self.range_bounds(stmt.range)
        carried = [name for name in _assigned_names(stmt.body)
                   if (b := self.lookup(name)) is not None and b.assignable]
        outer = [self.lookup(name) for name in carried]
        index = self.loop_variable(stmt.var, lo, hi)
        params = [index.value] + [Value(b.typed.type, name) for name, b in zip(carried, outer)]
        with self.b.region(params) as body:
            self.check_fresh(stmt.var, stmt.name_loc)
            scope = {stmt.var: Binding("loopvar", index, stmt.name_loc)}
            scope.update({name: Binding("let", Typed(p), b.loc) for name, p, b in zip(carried, params[1:], outer)})
            self.scopes.append(scope)
            try:
                self.block_statements(stmt.body, "a `for` loop")
            finally:
                self.scopes.pop()
            body.yields = [scope[name].typed.value for name in carried]
        results = self.b.region_op("loop", [b.typed.value for b in outer], (body,), [b.typed.type for b in outer],
                                   stmt.loc, hints=carried, lo=lo, hi=hi, var=stmt.var)
        for binding, result in zip(outer, results):
            binding.typed = Typed(result)

    def while_loop(self, stmt: ast.While):
        """`while cond max N { body }` as a loop of N trips carrying the body's names and a `running`
        flag: each trip runs the body in a `cond` on `running and cond` (so only the trips that ran
        compute anything, and gradients flow through them alone), and after the loop a `fail_if`
        stops the program if the condition still holds (never a silent truncation)."""
        limit = self.const_int(stmt.limit, "the `max` of `while`", minimum=1)
        carried = [name for name in _assigned_names(stmt.body)
                   if (b := self.lookup(name)) is not None and b.assignable]
        outer = [self.lookup(name) for name in carried]
        index = Value(I64, "while")
        params = [Value(b.typed.type, name) for name, b in zip(carried, outer)]
        running = Value(BOOL, "running")
        with self.b.region([index, *params, running]) as body:
            scope = {name: Binding("let", Typed(p), b.loc) for name, p, b in zip(carried, params, outer)}
            self.scopes.append(scope)
            try:
                go = self.prim("and", [Typed(running), self._while_condition(stmt)], stmt.loc)
                with self.b.region([]) as then_block:
                    self.conditional_depth += 1
                    self.scopes.append({})
                    try:
                        self.block_statements(stmt.body, "a `while` loop")
                    finally:
                        self.scopes.pop()
                        self.conditional_depth -= 1
                    then_block.yields = [scope[name].typed.value for name in carried]
                with self.b.region([]) as else_block:
                    else_block.yields = list(params)
                stepped = self.b.region_op("cond", [go.value], (then_block, else_block), [p.type for p in params],
                                           stmt.loc, hints=carried) if carried else ()
            finally:
                self.scopes.pop()
            body.yields = [*stepped, go.value]
        *results, still_running = self.b.region_op(
            "loop", [b.typed.value for b in outer] + [self.constant(True, stmt.loc).value], (body,),
            [b.typed.type for b in outer] + [BOOL], stmt.loc, hints=carried + ["running"], lo=0, hi=limit, var="while")
        for binding, result in zip(outer, results):
            binding.typed = Typed(result)
        unfinished = self.prim("and", [Typed(still_running), self._while_condition(stmt)], stmt.loc)
        self.prim("fail_if", [unfinished], stmt.loc,
                  message=f"`while` reached its max of {limit} iterations with its condition still true")

    def _while_condition(self, stmt: ast.While) -> Typed:
        cond = self.expr(stmt.cond)
        if cond.type != BOOL:
            raise SpadcError(f"the condition of `while` must be a scalar bool, got {cond.type}", ast.start_loc(stmt.cond))
        return cond

    # ---- functions ---------------------------------------------------------------

    def inline_call(self, fn_def, node: ast.Call, count: int | None = None):
        """The fn's value inlined at the call; with `count`, its `count` values (a list), for unpacking."""
        fn = fn_def.node
        if node.kwargs:
            raise SpadcError(f"`{fn.name}` takes no keyword arguments", node.kwargs[0].loc)
        if len(node.args) != len(fn.params):
            raise SpadcError(f"`{fn.name}` takes {len(fn.params)} argument{'s' * (len(fn.params) != 1)}, "
                             f"got {len(node.args)}", node.loc)
        if fn.name in self.fn_stack:  # modules.py rejects recursion first; this is a safety net
            raise SpadcError(f"recursive call of `{fn.name}`", node.loc)
        args = [self.expr(a) for a in node.args]
        saved_env, saved_scopes = self.env, self.scopes
        self.env, self.scopes = fn_def.env, [{}]
        self.fn_stack.append(fn.name)
        try:
            with self.b.inlining(node.loc):
                for param, arg, arg_node in zip(fn.params, args, node.args):
                    arg = self._conform_annotation(param.type, arg, f"argument `{param.name}` of `{fn.name}`",
                                                   arg_node.loc)
                    self.declare(param.name, "arg", Typed(arg.value, arg.const, arg.affine, arg.interval), param.loc)
                if not fn.body:
                    raise SpadcError(f"fn `{fn.name}` has an empty body: it must end with `return`", fn.name_loc)
                *body, last = fn.body
                if not isinstance(last, ast.Return):
                    raise SpadcError(f"fn `{fn.name}` must end with `return`", last.loc)
                self.block_statements(body, f"fn `{fn.name}`")
                items = last.value.items if isinstance(last.value, ast.TupleExpr) else (last.value,)
                annotations = fn.ret if isinstance(fn.ret, tuple) else (fn.ret,) if fn.ret else (None,) * len(items)
                if len(annotations) != len(items):
                    raise SpadcError(f"`{fn.name}` is declared to return {len(annotations)} value"
                                     f"{'s' * (len(annotations) != 1)} but returns {len(items)}", last.loc)
                if len(items) != (count or 1):
                    raise SpadcError(_arity_mismatch(fn.name, len(items), count), node.loc)
                results = [self._conform_annotation(annotation, self.expr(item), f"the result of `{fn.name}`",
                                                    ast.start_loc(item)) for annotation, item in zip(annotations, items)]
                return results if count is not None else results[0]
        finally:
            self.fn_stack.pop()
            self.env, self.scopes = saved_env, saved_scopes

    def _conform_annotation(self, annotation, value: Typed, what: str, loc: Loc) -> Typed:
        if annotation is None:
            return value
        expected = self.resolve_type(annotation)
        if expected.dtype == "f64" and value.type.dtype == "i64":
            value = self.prim("to_float", [value], loc)
        if value.type != expected:
            raise SpadcError(f"{what} must be {expected}, got {value.type}", loc)
        return value


def _arity_mismatch(name: str, returned: int, wanted: int | None) -> str:
    if wanted is None:
        return (f"`{name}` returns {returned} values: bind them to names, as in "
                f"`let {', '.join(f'v{k}' for k in range(returned))} = {name}(...)`")
    values = "one value" if returned == 1 else f"{returned} values"
    return f"`{name}` returns {values}, but {wanted} names are bound to it"


def _statement_word(stmt) -> str:
    words = {ast.Const: "`const`", ast.Input: "`input`", ast.State: "`state`", ast.Param: "`param`", ast.Fn: "`fn`",
             ast.Import: "`import`", ast.Output: "`output`", ast.Loss: "`loss`", ast.Return: "`return`"}
    return words.get(type(stmt), "this statement")


def _assigned_names(statements) -> list[str]:
    """Names rebound anywhere in these statements (nested loops included), in first-seen order."""
    names: list[str] = []
    for stmt in statements:
        if isinstance(stmt, (ast.Assign, ast.Update)) and stmt.name not in names:
            names.append(stmt.name)
        elif isinstance(stmt, ast.Unpack) and not stmt.declare:
            names += [n for n in stmt.names if n not in names]
        elif isinstance(stmt, (ast.For, ast.While)):
            names += [n for n in _assigned_names(stmt.body) if n not in names]
    return names


_BLOCK_HANDLERS = {
    ast.Let: StatementChecker.let,
    ast.Assign: StatementChecker.assign,
    ast.Unpack: StatementChecker.unpack,
    ast.Update: StatementChecker.update,
    ast.For: StatementChecker.for_loop,
    ast.While: StatementChecker.while_loop,
}
