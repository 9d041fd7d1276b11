"""A whole file to a checked `ir.Program`: declarations, top-level statements, the loss.

Invariants:
- The returned program has exactly one loss, a scalar f64, and every param is f64.
- A `state` is an input the runtime supplies and a hidden output (`_state.NAME`) of its final value.
- Param initialisers are resolved to an `InitSpec`; a value (`= expr`) is kept as written and
  broadcast to the declared shape only when params are allocated, so checking allocates no
  parameter storage. Params together fit in the memory limit (spadrt.limits).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from spadrt.errors import SpadcWarning
from spadrt.limits import format_bytes, limit_text
from spadrt.model import CALL_OPTIONS

from ..errors import Source, SpadcError, render
from ..ir.builder import Builder
from ..ir import primitives
from ..ir.core import STATE_OUTPUT, Block, InitSpec, InputDecl, ParamDecl, Program, StateDecl, Value
from ..syntax import ast
from . import modules
from .statements import StatementChecker
from .typed import Typed

DISTRIBUTIONS = {"normal": ("mean", "std"), "uniform": ("lo", "hi"), "glorot": ()}


def check_source(source: Source, base_dir: str | None = None, max_memory=None) -> Program:
    """`max_memory`: bytes (spadrt.limits); params together may not need more."""
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source.name)) if os.path.exists(source.name) else os.getcwd()
    module, env, files = modules.load(source, base_dir)
    program = _ProgramChecker(env, source, max_memory).run(module)
    program.files = files
    return program


class _ProgramChecker(StatementChecker):
    def __init__(self, env, source: Source, max_memory=None):
        super().__init__(Builder(Block()), env, max_memory)
        self.source = source
        self.param_bytes = 0
        self.params: list[ParamDecl] = []
        self.inputs: list[InputDecl] = []
        self.outputs: dict[str, Value] = {}
        self.loss: tuple[Typed, ast.Loss] | None = None
        self.classifier = None
        self.head = None
        self.states: list[StateDecl] = []

    def run(self, module: ast.Module) -> Program:
        handlers = {ast.Input: self.input, ast.State: self.state, ast.Param: self.param, ast.Output: self.output, ast.Loss: self.loss_stmt,
                    ast.Let: self.let, ast.Assign: self.assign, ast.Unpack: self.unpack, ast.Update: self.update, ast.For: self.for_loop,
                    ast.While: self.while_loop}
        for stmt in module.statements:
            if isinstance(stmt, (ast.Const, ast.Fn, ast.Import)):
                continue  # handled when the file was loaded (modules.py)
            if isinstance(stmt, ast.Return):
                raise SpadcError("`return` is only allowed at the end of a function", stmt.loc)
            handlers[type(stmt)](stmt)
        if self.loss is None:
            raise SpadcError("the model has no `loss` statement; it needs exactly one", self.source.end_loc())
        for state in self.states:  # the final value of each state leaves as a hidden output
            self.outputs[STATE_OUTPUT + state.name] = self.lookup(state.name).typed.value
        body = self.b.block
        body.params = [p.value for p in self.params] + [i.value for i in self.inputs]
        name = os.path.splitext(os.path.basename(self.source.name))[0]
        return Program(name, self.params, self.inputs, body, self.outputs, self.loss[0].value, self.classifier,
                       states=tuple(self.states), head=self.head)

    def state(self, stmt: ast.State):
        """An input that the runtime supplies (the carried value, or `init`), rebindable like a `let`."""
        if stmt.name in CALL_OPTIONS:
            raise SpadcError(f"a state may not be named `{stmt.name}`, like an option of `forward` and `grad`",
                             stmt.name_loc)
        type_ = self.resolve_type(stmt.type)
        if type_.dtype == "bool":
            raise SpadcError(f"a state must be f64 or i64, got {type_}", stmt.type.loc)
        init = np.zeros((), dtype=primitives.NUMPY_DTYPES[type_.dtype])
        if stmt.init is not None:
            init = self.const_value(stmt.init, f"the initial value of state `{stmt.name}`")
            if init.dtype.kind == "b" or (type_.dtype == "i64" and init.dtype.kind == "f"):
                raise SpadcError(f"the initial value of `{stmt.name}` must be {type_.dtype}", ast.start_loc(stmt.init))
            try:
                np.broadcast_shapes(init.shape, type_.shape)
            except ValueError:
                raise SpadcError(f"the initial value has shape {list(init.shape)}, which does not broadcast to "
                                 f"{type_}", ast.start_loc(stmt.init)) from None
            if not np.all(np.isfinite(init)):
                raise SpadcError(f"the initial value of `{stmt.name}` must be finite", ast.start_loc(stmt.init))
        value = Value(type_, stmt.name)
        self.declare(stmt.name, "state", Typed(value), stmt.name_loc)
        self.inputs.append(InputDecl(stmt.name, value, stmt.loc))
        self.states.append(StateDecl(stmt.name, value, init.astype(primitives.NUMPY_DTYPES[type_.dtype]), stmt.loc))

    def input(self, stmt: ast.Input):
        if stmt.name in CALL_OPTIONS:
            warnings.warn(render(f"input `{stmt.name}` is named like an option of `forward` and `grad`: from "
                                 f"Python, pass it as inputs={{\"{stmt.name}\": ...}}", stmt.name_loc, kind="warning"),
                          SpadcWarning, stacklevel=2)
        value = Value(self.resolve_type(stmt.type), stmt.name)
        self.declare(stmt.name, "input", Typed(value), stmt.name_loc)
        self.inputs.append(InputDecl(stmt.name, value, stmt.loc))

    def param(self, stmt: ast.Param):
        type_ = self.resolve_type(stmt.type)
        if type_.dtype != "f64":
            raise SpadcError(f"param `{stmt.name}` must be f64 (trainable values are floats), got {type_}",
                             stmt.type.loc)
        bounds = None
        if stmt.bounds is not None:
            bounds = tuple(self.const_float(b, "a bound") for b in stmt.bounds)
            if not bounds[0] < bounds[1]:
                raise SpadcError(f"the bounds of `{stmt.name}` must satisfy lo < hi, got [{bounds[0]}, {bounds[1]}]",
                                 stmt.bounds[0].loc)
        self.param_bytes += type_.size * 8
        if self.param_bytes > self.max_memory:
            raise SpadcError(f"the params up to `{stmt.name}` need {format_bytes(self.param_bytes)}: more than "
                             f"{limit_text(self.max_memory)}", stmt.type.loc)
        value = Value(type_, stmt.name)
        self.declare(stmt.name, "param", Typed(value), stmt.name_loc)
        self.params.append(ParamDecl(stmt.name, value, self._init(stmt, type_), bounds, stmt.loc))

    def _init(self, stmt: ast.Param, type_) -> InitSpec:
        init = stmt.init
        if init is None:
            return InitSpec("value", (np.float64(0.0),))
        if isinstance(init, ast.InitValue):
            value = self.const_value(init.value, f"the initial value of `{stmt.name}`")
            if value.dtype.kind == "b":
                raise SpadcError(f"the initial value of `{stmt.name}` must be numeric", init.loc)
            try:
                np.broadcast_shapes(value.shape, type_.shape)
            except ValueError:
                raise SpadcError(f"the initial value has shape {list(value.shape)}, which does not broadcast to "
                                 f"{type_}", init.value.loc) from None
            if not np.all(np.isfinite(value)):
                raise SpadcError(f"the initial value of `{stmt.name}` must be finite", init.value.loc)
            return InitSpec("value", (value.astype(np.float64),))  # broadcast when params are allocated
        if init.dist not in DISTRIBUTIONS:
            raise SpadcError(f"unknown distribution `{init.dist}` (expected normal, uniform or glorot)", init.loc)
        names = DISTRIBUTIONS[init.dist]
        if init.kwargs:
            raise SpadcError(f"`{init.dist}` takes its arguments by position", init.kwargs[0].loc)
        if len(init.args) != len(names):
            raise SpadcError(f"`{init.dist}` takes {len(names)} argument{'s' * (len(names) != 1)} "
                             f"({', '.join(names) or 'none'}), got {len(init.args)}", init.loc)
        args = tuple(self.const_float(a, f"the {n} of `{init.dist}`") for a, n in zip(init.args, names))
        for arg, node, n in zip(args, init.args, names):
            if not np.isfinite(arg):
                raise SpadcError(f"the {n} of `{init.dist}` must be finite, got {arg}", ast.start_loc(node))
        if init.dist == "uniform" and not np.isfinite(args[1] - args[0]):
            raise SpadcError(f"the range of `uniform` ({args[0]} to {args[1]}) is too wide for f64", init.loc)
        if init.dist == "normal" and args[1] < 0:
            raise SpadcError(f"the std of `normal` must be >= 0, got {args[1]}", init.args[1].loc)
        if init.dist == "uniform" and not args[0] < args[1]:
            raise SpadcError(f"`uniform` needs lo < hi, got {args[0]}, {args[1]}", init.loc)
        return InitSpec(init.dist, args)

    def output(self, stmt: ast.Output):
        typed = self.expr(stmt.value)
        self.declare(stmt.name, "output", typed, stmt.name_loc)
        self.outputs[stmt.name] = typed.value

    def loss_stmt(self, stmt: ast.Loss):
        if self.loss is not None:
            raise SpadcError("a second `loss`: a model has exactly one", stmt.loc,
                             (("the first `loss` is here", self.loss[1].loc),))
        self.last_head = None
        typed = self.expr(stmt.value)
        if typed.type.rank != 0:
            raise SpadcError(f"the loss must be a scalar, got {typed.type}", ast.start_loc(stmt.value))
        typed = self.to_float(typed, "the loss", stmt.value.loc)
        self.loss = (typed, stmt)
        if self.last_head is not None and self.last_head[2] is typed:  # the loss is the head as a whole
            kind, z, _ = self.last_head
            self.head = (kind, z.value)
            if self.last_label is not None:  # set by the same head: its scores and label
                self.classifier = tuple(x.value for x in self.last_label)
