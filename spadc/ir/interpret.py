"""The NumPy reference interpreter: the oracle for everything compiled.

It favours being plainly correct over being fast: one sample at a time, every op evaluated by its
primitive's NumPy implementation, loops run as Python loops.

Invariants:
- Values are NumPy arrays of the declared dtype (float64, int64, bool) and shape; scalars are 0-d.
- Only the chosen region of a `cond` runs, so an index error in the other branch cannot fire.
- A primitive's `Fault` becomes a `SpadcError` placed at the op's source line.
- Random primitives draw from `spadc.rng` (Philox4x64-10) keyed by (seed, site) at counter (entry
  block, flat loop iteration, sample, step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import rng
from ..errors import SpadcError
from . import primitives
from .core import Block, Op, Program, flat_iteration, loop_index
from .primitives import NUMPY_DTYPES


@dataclass
class Result:
    loss: float
    outputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class RunOptions:
    training: bool = False
    seed: int = 0
    step: int = 0
    sample: int = 0
    site_data: np.ndarray | None = None  # SPAD's per-site distributions (spadc/ir/draws.py)
    scores: np.ndarray | None = None  # accumulates site scores (SPAD evaluation steps), if given
    stored: np.ndarray | None = None  # stored[0] accumulates the bytes gates keep, if given


@dataclass(frozen=True)
class _Context:
    """What random and effect primitives see: keys for this op at this iteration, and SPAD's buffers."""
    op: Op
    options: RunOptions
    iteration: int  # the flat index of the enclosing loop and comprehension indices (spadc.rng)

    @property
    def training(self) -> bool:
        return self.options.training

    @property
    def site_data(self):
        return self.options.site_data

    def uniform(self, count: int) -> np.ndarray:  # dropout's stream: keyed by the op itself
        site = rng.site_id(self.op.loc, self.op.inlined_at)
        return rng.uniform(rng.Stream(self.options.seed, site, self.iteration, self.options.sample,
                                      self.options.step), count)

    def key(self, attrs) -> rng.Stream:  # a gate's stream: keyed by its site; shared by a batch if asked
        sample = 0 if attrs["share"] == "batch" else self.options.sample
        return rng.Stream(self.options.seed, attrs["site"], self.iteration, sample, self.options.step)

    def add_scores(self, start: int, values: np.ndarray):
        if self.options.scores is not None:
            self.options.scores[start:start + values.size] += np.abs(values)

    def count_stored(self, nbytes: int):
        if self.options.stored is not None:
            self.options.stored[0] += nbytes


def evaluate(program: Program, params: dict, inputs: dict, options: RunOptions = RunOptions()) -> Result:
    env = {}
    for decl in program.params:
        env[decl.value] = _conform(params, decl.name, decl.value.type, "param")
    for decl in program.inputs:
        env[decl.value] = _conform(inputs, decl.name, decl.value.type, "input")
    extra = set(inputs) - {d.name for d in program.inputs}
    if extra:
        raise SpadcError(f"unknown input `{sorted(extra)[0]}`; the model's inputs are "
                         f"{', '.join(d.name for d in program.inputs) or 'none'}")
    with np.errstate(all="ignore"):  # inf and NaN are values, as in compiled code
        _run_block(program.body, env, 0, options)
    return Result(float(env[program.loss]), {name: env[v] for name, v in program.outputs.items()})


def _conform(values: dict, name: str, type_, what: str) -> np.ndarray:
    if name not in values:
        raise SpadcError(f"missing {what} `{name}` ({type_})")
    array = np.asarray(values[name])
    if array.shape != type_.shape:
        raise SpadcError(f"{what} `{name}` must have shape {list(type_.shape)}, got {list(array.shape)}")
    if type_.dtype == "i64" and array.dtype.kind not in "iu":
        raise SpadcError(f"{what} `{name}` must be integers (i64), got {array.dtype}")
    return array.astype(NUMPY_DTYPES[type_.dtype])


def _run_block(block: Block, env: dict, iteration: int, options: RunOptions):
    for op in block.ops:
        if op.kind == "loop":
            _loop(op, env, iteration, options)
        elif op.kind == "tabulate":
            _tabulate(op, env, iteration, options)
        elif op.kind == "cond":
            region = op.regions[0] if bool(env[op.args[0]]) else op.regions[1]
            _run_block(region, env, iteration, options)
            for result, value in zip(op.results, region.yields):
                env[result] = env[value]
        else:
            env[op.result] = _primitive(op, [env[a] for a in op.args], iteration, options)


def _primitive(op: Op, args, iteration, options: RunOptions) -> np.ndarray:
    primitive = primitives.PRIMITIVES[op.kind]
    context = _Context(op, options, iteration) if primitive.family in ("random", "effect") else None
    try:
        out = primitive.evaluate(args, op.attrs, context)
    except primitives.Fault as fault:
        raise SpadcError(f"run-time error: {fault}", op.loc) from None
    return np.asarray(out, dtype=NUMPY_DTYPES[op.result.type.dtype])


def _loop(op: Op, env, iteration, options):
    (body,) = op.regions
    n = len(op.args)
    carried = [env[a] for a in op.args]
    lo, hi = op.attrs["lo"], op.attrs["hi"]
    kept = [np.zeros(r.type.shape, NUMPY_DTYPES[r.type.dtype]) for r in op.results[n:]]
    for t in (range(hi - 1, lo - 1, -1) if op.attrs.get("reverse") else range(lo, hi)):
        index, row = loop_index(op, t - lo)
        env[body.params[0]] = np.int64(index)
        for param, value in zip(body.params[1:], carried):
            env[param] = value
        multiplier, stride, offset = flat_iteration(op)
        _run_block(body, env, iteration * multiplier + offset + row * stride, options)
        carried = [env[y] for y in body.yields[:n]]
        for stack, value in zip(kept, body.yields[n:]):
            stack[t - lo] = env[value]
    for result, value in zip(op.results, carried + kept):
        env[result] = value


def _tabulate(op: Op, env, iteration, options):
    (body,) = op.regions
    stacks = [np.zeros(r.type.shape, NUMPY_DTYPES[r.type.dtype]) for r in op.results]
    lo = op.attrs["lo"]
    for i in range(lo, op.attrs["hi"]):
        env[body.params[0]] = np.int64(i)
        # The element index joins the key so that random ops draw independently per element.
        _run_block(body, env, iteration * (op.attrs["hi"] - lo) + (i - lo), options)
        for stack, value in zip(stacks, body.yields):
            stack[i - lo] = env[value]
    for result, stack in zip(op.results, stacks):
        env[result] = stack
