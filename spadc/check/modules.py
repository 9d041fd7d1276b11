"""Files and imports: what names a file brings, its consts' values, and recursion checks.

Invariants:
- A `ModuleEnv` holds the consts (evaluated, in declaration order: a const may use only the consts
  before it) and fns visible in one file, its own and those its imports bring. Only consts and fns
  cross an import; params, inputs and statements of an imported file are ignored.
- Import paths are relative to the importing file (to the working directory for a source given
  as text). A cycle of imports, a missing file or a name clash is an error at the `import`.
- No fn is recursive, directly or through others: the call graph is checked when a file loads,
  and recursion is reported at the call that closes the cycle.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import Loc, Source, SpadcError, read_text
from ..ir.builder import Builder
from ..ir.core import Block
from ..syntax import ast
from ..syntax.parser import parse
from .builtins import BUILTINS, REDEFINABLE
from .expressions import BUILTIN_CONSTANTS


MAX_IMPORT_DEPTH = 32  # files in one chain of imports
MAX_CALL_DEPTH = 32  # fns in one chain of calls (each is inlined into its caller)


@dataclass(frozen=True)
class ConstDef:
    value: np.ndarray  # a 0-d i64 or f64 array
    loc: Loc


@dataclass(frozen=True, eq=False)
class FnDef:
    node: ast.Fn
    env: "ModuleEnv"


@dataclass(eq=False)
class ModuleEnv:
    path: str
    consts: dict[str, ConstDef] = field(default_factory=dict)
    fns: dict[str, FnDef] = field(default_factory=dict)
    top_level_names: set[str] = field(default_factory=set)  # inputs, params, lets, outputs


def load(source: Source, base_dir: str) -> tuple[ast.Module, ModuleEnv, tuple[str, ...]]:
    """The main module, its environment, and the absolute paths of the files it imports."""
    loader = _Loader(base_dir)
    module, env = loader.load(source, base_dir, ())
    return module, env, tuple(loader.files)


class _Loader:
    def __init__(self, main_dir: str):
        self._main_dir = main_dir  # imported modules are named relative to it in random keys
        self._loaded: dict[str, ModuleEnv] = {}
        self.files: list[str] = []  # every imported file, in the order read

    def load(self, source: Source, base_dir: str, importing: tuple[str, ...]) -> tuple[ast.Module, ModuleEnv]:
        from .statements import StatementChecker  # consts are evaluated by the same checker as code

        module = parse(source)
        env = ModuleEnv(source.name)
        checker = StatementChecker(Builder(Block()), env)
        own_fns = []
        for stmt in module.statements:
            if isinstance(stmt, ast.Import):
                self._import(stmt, env, base_dir, importing + (os.path.abspath(source.name),))
            elif isinstance(stmt, ast.Const):
                _check_new_global(env, stmt.name, stmt.name_loc)
                value = checker.const_value(stmt.value, f"the value of const `{stmt.name}`")
                if value.ndim != 0 or value.dtype.kind not in "iuf":
                    raise SpadcError(f"const `{stmt.name}` must be an integer or a float", stmt.value.loc)
                env.consts[stmt.name] = ConstDef(value, stmt.name_loc)
            elif isinstance(stmt, ast.Fn):
                if stmt.name in BUILTINS and stmt.name not in REDEFINABLE:
                    raise SpadcError(f"`{stmt.name}` is a builtin function and cannot be redefined", stmt.name_loc)
                _check_new_global(env, stmt.name, stmt.name_loc)
                env.fns[stmt.name] = FnDef(stmt, env)
                own_fns.append(env.fns[stmt.name])
            elif isinstance(stmt, (ast.Input, ast.State, ast.Param, ast.Let, ast.Output)):
                env.top_level_names.add(stmt.name)
            elif isinstance(stmt, ast.Unpack) and stmt.declare:
                env.top_level_names.update(stmt.names)
        _reject_recursion(own_fns)
        return module, env

    def _import(self, stmt: ast.Import, env: ModuleEnv, base_dir: str, importing: tuple[str, ...]):
        path = os.path.abspath(os.path.join(base_dir, stmt.path))
        if path in importing:
            chain = " -> ".join(os.path.basename(p) for p in importing[importing.index(path):] + (path,))
            raise SpadcError(f"import cycle: {chain}", stmt.loc)
        if len(importing) >= MAX_IMPORT_DEPTH:
            raise SpadcError(f"imports are chained more than {MAX_IMPORT_DEPTH} files deep", stmt.loc)
        if path not in self._loaded:
            text = _read_module(path, stmt)
            self.files.append(path)
            name = os.path.relpath(path) if not os.path.isabs(stmt.path) else path
            module = os.path.relpath(path, self._main_dir).replace(os.sep, "/")
            _, imported = self.load(Source(name, text, module), os.path.dirname(path), importing)
            self._loaded[path] = imported
        imported = self._loaded[path]
        # A definition reached along two paths (a diamond: two imported files import one base) is
        # the same object both times, loaded once: only a different definition is a duplicate.
        for name, const in imported.consts.items():
            if env.consts.get(name) is not const:
                _check_new_global(env, name, stmt.loc, imported_from=stmt.path)
                env.consts[name] = const
        for name, fn in imported.fns.items():
            if env.fns.get(name) is not fn:
                _check_new_global(env, name, stmt.loc, imported_from=stmt.path)
                env.fns[name] = fn


def _read_module(path: str, stmt: ast.Import) -> str:
    try:
        return read_text(path)
    except SpadcError as error:
        raise SpadcError(f"cannot import \"{stmt.path}\": {error.bare_message}", stmt.loc) from None


def _check_new_global(env: ModuleEnv, name: str, loc: Loc, imported_from: str | None = None):
    if name in BUILTIN_CONSTANTS:
        raise SpadcError(f"duplicate name `{name}`: it is a builtin constant", loc)
    previous = env.consts.get(name) or env.fns.get(name)
    if previous is None:
        return
    previous_loc = previous.loc if isinstance(previous, ConstDef) else previous.node.name_loc
    what = f"`{name}` imported from \"{imported_from}\"" if imported_from else f"`{name}`"
    raise SpadcError(f"duplicate name {what}", loc, ((f"`{name}` was first defined here", previous_loc),))


# ---- recursion -----------------------------------------------------------------

def _calls(node):
    """Every `Call` and `GenCall` inside an AST node, in source order (a loop over a stack: a sum of
    thousands of terms is that deep in the AST)."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Call, ast.GenCall)):
            yield node
        if dataclasses.is_dataclass(node):
            stack.extend(getattr(node, f.name) for f in reversed(dataclasses.fields(node)))
        elif isinstance(node, tuple):
            stack.extend(reversed(node))


def _reject_recursion(fns: list[FnDef]):
    done: set[int] = set()

    def visit(fn: FnDef, path: list[FnDef]):
        if id(fn) in done:
            return
        path.append(fn)
        if len(path) > MAX_CALL_DEPTH:
            raise SpadcError(f"calls are nested more than {MAX_CALL_DEPTH} functions deep "
                             f"({' -> '.join(f.node.name for f in path[:4])} -> ...)", fn.node.name_loc)
        for call in _calls(fn.node.body):
            callee = fn.env.fns.get(call.name)
            if callee is None:
                continue
            if callee in path:
                cycle = [f.node.name for f in path[path.index(callee):]] + [callee.node.name]
                detail = "calls itself" if len(cycle) == 2 else "is reached again: " + " -> ".join(cycle)
                raise SpadcError(f"recursive call: `{callee.node.name}` {detail}; functions are inlined and "
                                 f"cannot recurse", call.loc)
            visit(callee, path)
        path.pop()
        done.add(id(fn))

    for fn in fns:
        visit(fn, [])
