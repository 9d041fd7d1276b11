"""A differential fuzzer: random valid .spad programs (every construct and builtin but `state`), compiled and checked against independent
oracles, and random mutants of them, which may only ever give located `SpadcError`s.

Each generated program is checked for (`check_program`):
- forward values, in evaluation and in training mode (dropout), compiled against the NumPy
  interpreter;
- the exact gradient in training mode (dropout masks drawn again by the adjoint), compiled against
  the interpreter running the gradient program;
- a batch against the same samples one by one (`sample_offset`), to the bit;
- a build that runs four samples side by side against the default one: forward values to the
  bit, the batch's mean gradient to rounding;
- RAD at keep 1 against the exact gradient, to the bit, and a sampled RAD twice with one seed;
- RAD's tape under every site policy against the exact tape: never larger;
- f32 against f64, on smooth programs;
- the quick tier's code (what the checks above ran) against O3's (spadc/backend/tiers.py): forward
  values in training mode and the exact gradient, to the bit;
- on smooth programs, the gradient against a fourth-order central difference along a random
  direction (an oracle independent of the adjoint), at steps from 1e-3 down to 1e-6 until one
  agrees (a loss that curves fast needs a fine step; a wrong gradient fails at every step);
- forward mode's loss tangent against reverse mode's gradient along the same direction, and on
  smooth programs the Hessian product against central differences of the compiled gradient.

Programs of seeds from CONV_FAMILY on also write the convolutional builtins (`conv` with computed
weights: channel mixing, depthwise, strided, 2-D; `max_pool`, `avg_pool`, `pad`, `upsample`), in
every position an [M, N] expression takes. They are a family of their own so that the programs of
lower seeds, and runs of the long profile counted on them, stay what they were.

The generator reaches loops that run zero times or once (`0..0`, `T..T`, `1..T` with T = 1) and
conds nested in conds' branches in every position, in smooth programs too (their conditions read
inputs only, so the loss stays smooth in the params). Until issue 29 it did neither, and it checked
no forward mode: it never built a zero-trip loop, its conds appeared only in rough programs (where
no central difference runs), and the gradient was compared with the interpreter running the same
gradient program, whose activity analysis shared the bug. So both silently wrong derivatives
(a zero-trip loop's dropped gradient, a nested cond's lost curvature) were out of its reach.

Run as a script for the long profile (`python tests/fuzzing.py --programs 10000 --workers 2`: about
5 s per program on one core here, 2026-12-06, most kernels at the quick tier); the suite runs a
seeded short profile (tests/test_fuzz.py). `--ir-digests OUT.json` writes, for the programs' seeds,
a digest of each one's LLVM IR (every kernel of a build, with 1 and LANES lanes): two compilers
whose digests agree make the same code for those programs, so a run on one holds for the other. Every failure prints its seed, which regenerates the
program; a check that takes over PROGRAM_TIMEOUT seconds counts as a hang, a crashed worker as a
crash.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import spadc  # noqa: E402
import spadrt  # noqa: E402
from spadc import aot  # noqa: E402
from spadc.ad.reverse import gradient  # noqa: E402
from spadc.ad.tape import plan_tape  # noqa: E402
from spadc.backend import budget, tiers  # noqa: E402
from spadc.passes.checkpoint import Binomial  # noqa: E402
from spadc.ir.interpret import RunOptions, evaluate  # noqa: E402

COMPILED_RTOL = 1e-9  # compiled against interpreted values (LLVM may reorder sums)
F32_RTOL = 2e-3  # f32 against f64 losses, on smooth programs whose loss is not tiny
# Steps of the fourth-order central difference, tried in turn until one agrees: a chaotic loop can
# have a second derivative of 1e8 along the direction (seed 7932), where 1e-3 is far too coarse.
DIRECTION_STEPS = (1e-3, 1e-4, 1e-5, 1e-6)
DIRECTION_RTOL = 1e-5
TANGENT_RTOL = 1e-9  # forward against reverse mode: both exact up to rounding
JAX_RTOL = 1e-10  # spadc's derivatives against JAX's of the same program, relative to the largest entry
BATCH = 3
LANES = 4  # a block of lanes that BATCH samples fill in part
LANES_RTOL = 1e-11  # a batch's mean gradient with lanes against the default build's (sums reordered)
RAD_EDGES = spadc.RAD(keep=0.5, policy="edges")  # every kind of site at once
WORKER_TASKS = 5  # chunks of 100 seeds each worker process checks before the pool is replaced
CONV_FAMILY = 10_000_000  # seeds from here on write the convolutional builtins too

SMOOTH_UNARY = ["tanh({0})", "sin({0})", "cos({0})", "sigmoid({0})", "exp(tanh({0}))", "log({0} * {0} + 1)",
                "log1p({0} * {0})", "sqrt({0} * {0} + 1)", "softplus({0})", "expm1(tanh({0}))",
                "tan(0.3 * tanh({0}))", "-{0}", "sin(pi * {0}) * e", "(({0}) * ({0}) + 1) ^ 0.5", "2 ^ tanh({0})",
                "atan({0})", "sinh(tanh({0}))", "cosh(tanh({0}))", "asin(0.5 * tanh({0}))", "acos(0.5 * tanh({0}))",
                "erf({0})", "gelu({0})", "silu({0})", "lgamma({0} * {0} + 0.5)", "digamma({0} * {0} + 1)"]
ROUGH_UNARY = ["abs({0})", "relu({0})", "sign({0})", "floor({0})", "stop_gradient({0})", "float(int({0} * 3))",
               "abs({0}) ^ 1.5", "round({0} * 2)", "elu({0})", "leaky_relu({0}, a=0.1)", "clip({0}, -0.5, 0.8)"]
SMOOTH_BINARY = ["{0} + {1}", "{0} - {1}", "{0} * {1}", "{0} / ({1} * {1} + 1)", "atan2({0}, {1} * {1} + 1)"]
ROUGH_BINARY = ["max({0}, {1})", "min({0}, {1})", "where({0} > {1}, {0}, {1} * 2)", "({0}) // 0.7 + {1}",
                "({0}) % 0.7 + {1}", "where({0} < 0.1 and not ({1} >= 1) or {0} == {1}, {0}, -{1})",
                "where({0} <= {1} or {0} != {1} * 2, {0}, {1})"]
# norm is not differentiable at 0 (its gradient is NaN there, as JAX's): shifted, its operand is
# never the zero vector that a constant operand can be.
REDUCTIONS = ["sum({0})", "mean({0})", "prod(tanh({0}))", "norm({0} + 0.5)", "logsumexp({0})", "var({0})",
              "bce({0}, 0.3)"]
ROUGH_REDUCTIONS = ["max({0})", "min({0})", "huber({0}, 0.2)"]


class ProgramGenerator:
    """One random program: consts N, M, T; params and inputs of shapes (), [N], [M], [M, N];
    fns, lets, loops with carried values, comprehensions, conds; one scalar loss."""

    def __init__(self, seed: int, smooth: bool | None = None):
        self.rng = np.random.default_rng(seed)
        self.smooth = bool(self.rng.random() < 0.5) if smooth is None else smooth
        self.conv = seed >= CONV_FAMILY
        self.n, self.m = (int(v) for v in self.rng.integers(2, 5, 2))
        self.t = int(self.rng.integers(1, 5))
        self.shapes = {(): "s", ("N",): "v", ("M",): "w", ("M", "N"): "A", ("N", "M"): "B"}
        self.variables: dict[tuple, list[str]] = {shape: [] for shape in self.shapes}
        self.indices: list[str] = []  # i64 names valid as an index below N (loop variables)
        self.counter = 0

    # ---- pieces ----------------------------------------------------------------------

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def size(self, dim: str) -> int:
        return {"N": self.n, "M": self.m}[dim]

    def constant(self, shape: tuple) -> str:
        value = f"{self.rng.uniform(-1.5, 1.5):.3f}"
        if not shape:
            return f"({value})"
        return self.choice([f"fill({value}, {', '.join(shape)})", f"zeros({', '.join(shape)})",
                            f"(ones({', '.join(shape)}) * {value})"])

    def index(self, dim: str) -> str:
        options = ["0", f"{dim} - 1"]
        if dim == "N":
            options += [f"({i} + 1) % N" for i in self.indices] + [f"min({i}, N - 1)" for i in self.indices]
            options += ["k % N", "max(k // 2, 1) % N", "min(abs(k - 3), N - 1)"]  # inputs: checked at run time
            if not self.smooth and self.variables[("N",)]:  # argmax jumps: never in smooth programs
                options.append(f"argmax({self.choice(self.variables[('N',)])})")
        return self.choice(options)

    # ---- expressions of a given shape ---------------------------------------------------

    def expr(self, shape: tuple, depth: int) -> str:
        if depth <= 0 or self.rng.random() < 0.2:
            return self.leaf(shape)
        kind = self.choice(["unary", "binary", "binary", "reduce", "linear", "structure", "fn", "cond"])
        return getattr(self, f"_{kind}")(shape, depth - 1)

    def leaf(self, shape: tuple) -> str:
        names = self.variables[shape]
        if names and self.rng.random() < 0.85:
            return self.choice(names)
        if shape == () and self.variables[("N",)] and self.rng.random() < 0.5:
            return f"{self.choice(self.variables[('N',)])}[{self.index('N')}]"
        return self.constant(shape)

    def _unary(self, shape, depth):
        table = SMOOTH_UNARY + ([] if self.smooth else ROUGH_UNARY)
        return self.choice(table).format(self.expr(shape, depth))

    def _binary(self, shape, depth):
        table = SMOOTH_BINARY + ([] if self.smooth else ROUGH_BINARY)
        other = shape if self.rng.random() < 0.7 else ()  # broadcast a scalar
        left, right = self.expr(shape, depth), self.expr(other, depth)
        if self.rng.random() < 0.5:
            left, right = right, left
        return "(" + self.choice(table).format(left, right) + ")"

    def _reduce(self, shape, depth):
        table = REDUCTIONS + ([] if self.smooth else ROUGH_REDUCTIONS)
        if shape == ():
            source = self.choice([("N",), ("M", "N")])
            return self.choice(table).format(self.expr(source, depth))
        if len(shape) == 1:
            axis = 0 if shape == ("N",) else 1
            reduction = self.choice(["sum", "mean", "logsumexp"] + ([] if self.smooth else ["max"]))
            return f"{reduction}({self.expr(('M', 'N'), depth)}, axis={axis})"
        return self.expr(shape, depth)

    def pick(self, *makers) -> str:
        """One of the options, generated only once chosen (so unchosen ones draw no randomness)."""
        return self.choice(makers)()

    def _linear(self, shape, depth):
        e = lambda *dims: self.expr(dims, depth)  # noqa: E731
        if shape == ("M",):
            return f"({e('M', 'N')} @ {e('N')})"
        if shape == ("N",):
            return self.pick(lambda: f"({e('M')} @ {e('M', 'N')})", lambda: f"(eye(N) @ {e('N')})",
                             lambda: f"softmax({e('N')})", lambda: f"log_softmax({e('N')})",
                             lambda: f"(onehot(k % N, N) * {e('N')})",
                             lambda: f"solve(eye(N) * 4.0 + tanh({self.square(depth)}), {e('N')})",
                             lambda: f"(cholesky({self.positive_definite(depth)}) @ {e('N')})",
                             lambda: f"(tril({self.square(depth)}, -1) @ {e('N')})",
                             lambda: f"(triu({self.square(depth)}) @ {e('N')})")
        if self.conv and shape in (("M", "N"), ("N",)) and self.rng.random() < 0.5:
            return self.pick(*self._convolutions(shape, depth))
        if shape == ("M", "N"):
            return self.pick(lambda: f"outer({e('M')}, {e('N')})", lambda: f"transpose({e('N', 'M')})",
                             lambda: f"reshape({e('N', 'M')}, M, N)", lambda: f"({e('M', 'N')} @ (eye(N) * 0.5))",
                             lambda: f"concat(reshape({e('N')}, 1, N), ({e('M', 'N')})[1:M])",
                             lambda: "stack(" + ", ".join(e("N") for _ in range(self.m)) + ")")
        if shape == ("N", "M"):
            return self.pick(lambda: f"transpose({e('M', 'N')})", lambda: f"transpose({e('M', 'N')}, 1, 0)",
                             lambda: f"reshape({e('M', 'N')}, -1, M)",
                             lambda: "stack(" + ", ".join(e("N") for _ in range(self.m)) + ", axis=-1)")
        return self.pick(lambda: f"dot({e('N')}, {e('N')})", lambda: f"({e('M')} @ {e('M')})",
                         lambda: f"mse({e('N')}, {e('N')})", lambda: f"logdet({self.positive_definite(depth)})")

    def _convolutions(self, shape, depth) -> list:
        """Expressions of `shape` ([M, N] or [N]) through the convolutional builtins: an [M, N] matrix
        is M channels of a signal of N, or one channel of an M x N image, a vector one channel of a
        signal; the weights are expressions, not params."""
        e = lambda *dims: self.expr(dims, depth)  # noqa: E731
        if shape == ("N",):
            makers = [lambda: f"conv(reshape({e('N')}, 1, N), reshape({e('N')}, 1, 1, N), padding=N - 1)[0, 0:N]",
                      lambda: f"avg_pool(upsample(reshape({e('N')}, 1, N), 2), 2)[0]"]
            if not self.smooth:
                makers.append(lambda: f"max_pool(reshape({e('N')}, 1, N), 2, stride=1, padding=1)[0, 1:N + 1]")
            return makers
        mixing = lambda: f"reshape(outer({e('M')}, {e('M')}), M, M, 1)"  # noqa: E731
        makers = [lambda: f"conv({e('M', 'N')}, {mixing()})",
                  lambda: f"conv({e('M', 'N')}, reshape({e('M', 'N')}, M, 1, N), groups=M, padding=N - 1)[:, 0:N]",
                  lambda: f"upsample(conv({e('M', 'N')}, {mixing()}, stride=2, dilation=2), 2)[:, 0:N]",
                  lambda: (f"conv(reshape({e('M', 'N')}, 1, M, N), reshape({e('M', 'N')}, 1, 1, M, N), "
                           f"padding=[M - 1, N - 1], stride=[1, 1])[0, 0:M, 0:N]"),
                  lambda: f"avg_pool(pad({e('M', 'N')}, 1), 3, stride=1)",
                  lambda: f"upsample(avg_pool(reshape({e('M', 'N')}, 1, M, N), 2, padding=1), [2, 2])[0, 0:M, 0:N]"]
        if not self.smooth:  # a max's choice jumps
            makers += [lambda: f"max_pool(pad({e('M', 'N')}, 1), 3, stride=1)",
                       lambda: f"upsample(max_pool(reshape({e('M', 'N')}, 1, M, N), 2, padding=1), 2)[0, 0:M, 0:N]"]
        return makers

    def square(self, depth) -> str:
        return f"({self.expr(('N', 'M'), depth)} @ {self.expr(('M', 'N'), depth)})"

    def positive_definite(self, depth) -> str:
        """G G^T + I, G with entries in [-1, 1] (NaN, from an overflow upstream, taken as 0: NaN is
        no positive definite matrix, and would stop the program): condition number at most 1 + N M.
        G is written twice, so it must not draw (dropout): the two would differ."""
        factor = f"tanh({self.expr(('N', 'M'), depth)})"
        if "dropout" in factor:
            factor = f"tanh({self.constant(('N', 'M'))})"
        factor = f"where(abs({factor}) <= 1.0, {factor}, 0.0)"
        return f"({factor} @ transpose({factor}) + eye(N))"

    def _structure(self, shape, depth):
        """Indexing, slices, comprehensions, generator reductions, literals, dropout."""
        if shape == ():
            i = self.fresh("i")
            self.indices.append(i)
            body = self.expr((), depth)
            self.indices.pop()
            reduction = self.choice(["sum", "mean", "prod"] + ([] if self.smooth else ["max", "min"]))
            if self.variables[("M", "N")] and self.rng.random() < 0.3:
                return f"{self.choice(self.variables[('M', 'N')])}[{self.index('M')}, {self.index('N')}]"
            if self.rng.random() < 0.15:  # a slice from a start known at run time (in range: k % 2 <= N - (N - 1))
                start = self.choice(["k % 2", "min(abs(k - 3), 1)", "label % 2"])
                return f"sum(({self.expr(('N',), depth)})[{start}:{start} + N - 1])"
            return f"{reduction}(tanh({body}) for {i} in 0..N)"
        if shape == ("N",):
            i = self.fresh("i")
            self.indices.append(i)
            body = self.expr((), depth)
            self.indices.pop()
            options = [f"[{body} for {i} in 0..N]", f"dropout({self.expr(shape, depth)}, 0.3)",
                       "[" + ", ".join(self.expr((), depth) for _ in range(self.n)) + "]"]
            if self.variables[("M", "N")]:
                options.append(f"{self.choice(self.variables[('M', 'N')])}[{self.index('M')}]")
            options.append(f"((({self.expr(('N',), depth)})[1:N] @ ones(N - 1)) * ones(N))")
            return self.choice(options)
        if shape == ("M",) and self.variables[("M", "N")]:
            return f"{self.choice(self.variables[('M', 'N')])}[:, {self.index('N')}]"
        if shape == ("M", "N"):
            i = self.fresh("i")
            self.indices.append(i)
            row = self.expr(("N",), depth)
            self.indices.pop()
            return f"[{row} for {i} in 0..M]"
        return self.expr(shape, depth)

    def _fn(self, shape, depth):
        return f"f{self.choice([0, 1])}({self.expr(shape, depth)}, {self.expr((), depth)})"

    def condition(self, depth) -> str:
        """A bool. In smooth programs it reads inputs, constants and loop variables only, so the loss
        stays smooth in the params; elsewhere it may compare param-dependent values."""
        options = ["true", "false", f"x[{self.index('N')}] > {self.rng.uniform(-0.5, 0.5):.2f}", "k % 2 == 0",
                   "k > 25 and not (x[0] > 0.5)"]
        options += [f"{i} > 0" for i in self.indices]
        if not self.smooth:
            options += [f"{self.expr((), depth)} > {self.expr((), depth)}"] * 3
        return self.choice(options)

    def _cond(self, shape, depth):
        """`if`, its branches often conds themselves (a cond in a cond's branch keeps its record in
        the outer one's: forward over reverse once lost its tangent there)."""
        def branch():
            roll = self.rng.random()
            if roll < 0.35 and depth > 0:
                return self._cond(shape, depth - 1)
            if roll < 0.6:  # a nonlinear branch: its adjoint keeps a value in the cond's record
                return self._unary(shape, max(depth, 1))
            return self.expr(shape, depth)
        return f"(if {self.condition(depth)} then {branch()} else {branch()})"

    # ---- the program ---------------------------------------------------------------------

    def program(self) -> str:
        lines = [f"const N = {self.n}", f"const M = {self.m}", f"const T = {self.t}",
                 "fn f0(a, b) = tanh(a) * b + a", "fn f1(a, b) {", "  let c = a * 0.5", "  return sigmoid(c) + b",
                 "}", "fn f2(a, b) {", "  return a * b, tanh(a) - b", "}", "input x: f64[N]", "input seq: f64[T, N]", "input k: i64", "input label: i64"]
        self.variables[("N",)] += ["x"]
        inits = ["~ normal(0, 0.5)", "~ uniform(-1, 1)", "= 0.3", "~ glorot()", "in [-2, 2] ~ normal(0, 0.5)"]
        for shape in self.shapes:
            for _ in range(int(self.rng.integers(1, 3))):
                name = self.fresh("p")
                dims = f"[{', '.join(shape)}]" if shape else ""
                lines.append(f"param {name}: f64{dims} {self.choice(inits)}")
                self.variables[shape].append(name)
        for _ in range(int(self.rng.integers(1, 4))):
            lines += self.statement(depth=3)
        shape = self.choice(list(self.shapes))
        lines.append(f"output out = {self.expr(shape, 2)}")
        if self.rng.random() < 0.3:
            lines.append(f"loss cross_entropy({self.expr(('N',), 3)}, label) + 0.1 * {self.expr((), 2)}")
        else:
            lines.append(f"loss {self.expr((), 4)} + sum(out * out) * 0.01")
        return "\n".join(lines) + "\n"

    def statement(self, depth: int) -> list[str]:
        shape = self.choice(list(self.shapes))
        name = self.fresh("h")
        roll = self.rng.random()
        if roll < 0.15:  # a fn's two values, unpacked
            other = self.fresh("g")
            lines = [f"let {name}, {other} = f2({self.expr(shape, depth)}, {self.expr(shape, depth)})"]
            self.variables[shape].append(other)
        else:
            lines = [f"let {name} = {self.expr(shape, depth)}"]
        if shape == ("N",) and self.rng.random() < 0.3:  # a functional update of an entry or a slice
            target = self.choice([self.index("N"), "0:N - 1", "k % 2:k % 2 + 1"])
            lines.append(f"{name}[{target}] {self.choice(['=', '+='])} {self.expr((), depth - 1)}")  # broadcast
        if roll > 0.5:
            lines += self.loop(name, shape, depth)
        elif roll > 0.3:
            lines += self.while_loop(name, shape, depth)
        self.variables[shape].append(name)
        return lines

    def while_loop(self, carried: str, shape: tuple, depth: int) -> list[str]:
        """A `while` whose trip count is bounded by a counter below its max (never an error). In
        smooth programs its condition reads the counter and inputs only: the trip count then does not
        move with the params, so central differences see a smooth loss."""
        count, bound = self.fresh("c"), int(self.rng.integers(0, 4))
        extra = [f"x[{self.index('N')}] + 0.2 * float({count}) < 0.9", "k % 3 != 1"]
        if not self.smooth:
            extra.append(f"{self.expr((), depth - 1)} < 0.5")
        condition = f"{count} < {bound}" + (f" and {self.choice(extra)}" if self.rng.random() < 0.6 else "")
        self.variables[shape].append(carried)
        body = [f"let {count} = 0", f"while {condition} max {bound + int(self.rng.integers(1, 3))} {{",
                f"  {carried} = {self.expr(shape, depth - 1)}", f"  {count} = {count} + 1", "}"]
        self.variables[shape].remove(carried)
        return body

    def loop_range(self) -> str:
        """Mostly all of 0..T; often a range of one step or none (with T = 1, `1..T` is empty too): a
        loop that never runs returns its initial values, derivatives included."""
        if self.rng.random() < 0.5:
            return "0..T"
        return self.choice(["0..0", "T..T", "1..1", "T - 1..T", "1..T"])

    def loop(self, carried: str, shape: tuple, depth: int) -> list[str]:
        t = self.fresh("t")
        self.variables[shape].append(carried)
        self.indices.append(t)
        self.variables[("N",)].append(f"seq[{t}]")
        body = [f"for {t} in {self.loop_range()} {{"]
        if self.rng.random() < 0.3:
            inner = self.fresh("u")
            self.indices.append(inner)
            body += [f"  for {inner} in {self.choice(['0..2', '0..2', '0..0', '1..1'])} {{",
                     f"    {carried} = {self.expr(shape, depth - 1)}", "  }"]
            self.indices.pop()
        body.append(f"  {carried} = {self.expr(shape, depth - 1)}")
        if self.rng.random() < 0.3:
            body.append(f"  {carried} = {self.constant(shape)}")  # an update independent of every param
        body.append("}")
        self.variables[("N",)].pop()
        self.indices.pop()
        self.variables[shape].remove(carried)
        return body


# ---- checking one program -----------------------------------------------------------------

class Mismatch(AssertionError):
    pass


def _close(name: str, got, want, rtol: float):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = 1.0 + (np.max(np.abs(want[np.isfinite(want)])) if np.isfinite(want).any() else 0.0)
    if not np.allclose(got, want, rtol=rtol, atol=rtol * scale, equal_nan=True):
        raise Mismatch(f"{name}: {got} against {want}")


def inputs_for(seed: int, generator: ProgramGenerator, batch: int | None = None) -> dict:
    rng = np.random.default_rng(seed + 1)
    lead = () if batch is None else (batch,)
    return {"x": rng.uniform(-1, 1, lead + (generator.n,)), "seq": rng.uniform(-1, 1, lead + (generator.t, generator.n)),
            "k": rng.integers(0, 50, lead), "label": rng.integers(0, generator.n, lead)}


def compiled_program(seed: int):
    """(generator, text, model with its params initialised) of generated program `seed`."""
    generator = ProgramGenerator(seed)
    text = generator.program()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = spadc.compile_source(text, name=f"fuzz{seed}.spad")
    model.init_params(seed=seed)
    return generator, text, model


def check_program(seed: int) -> str:
    """Generate program `seed` and check it against every oracle; returns its text."""
    generator, text, model = compiled_program(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = spadc.check_text(text, f"fuzz{seed}.spad")
    params = {k: v.copy() for k, v in model.params.items()}
    inputs = inputs_for(seed, generator)
    for training in (False, True):
        options = RunOptions(training=training, seed=seed, step=3, sample=0)
        reference = evaluate(program, params, inputs, options)
        result = model.forward(**inputs, training=training, seed=seed, step=3)
        _close(f"loss (training={training})", result.loss, reference.loss, COMPILED_RTOL)
        _close("output", result.outputs["out"], reference.outputs["out"], COMPILED_RTOL)
    # In training mode the adjoint draws dropout masks again from their keys: they must be the same.
    loss, grads = model.grad(**inputs, training=True, seed=seed, step=3)
    training = RunOptions(training=True, seed=seed, step=3, sample=0)
    interpreted = evaluate(gradient(program).program, params, inputs, training)
    _close("gradient loss", loss, interpreted.loss, COMPILED_RTOL)
    for name in grads:
        _close(f"d loss / d {name}", grads[name], interpreted.outputs[name], COMPILED_RTOL)
    _check_tape(program)
    _check_batch(model, generator, seed)
    _check_lanes(text, model, generator, seed)
    sampled = _check_sampled(model, inputs, model.grad(**inputs)[1], seed)
    _check_checkpointed(text, seed, inputs, [(dict(training=True, step=3), (loss, grads)),
                                             (dict(estimator=RAD_EDGES, step=1), sampled)])
    _check_tiers(text, seed, inputs, model)
    _check_tangent(model, inputs, params, seed)
    _check_vjp(model, inputs, params, seed, smooth=generator.smooth and np.isfinite(loss))
    if generator.smooth and np.isfinite(loss):
        _check_direction(model, inputs, params, grads, seed)
        _check_hessian_product(model, inputs, params, seed)
        _check_f32(text, seed, inputs, model.loss(**inputs))
    return text


def check_against_jax(seed: int, library_directory: str | None = None, f32: bool = True) -> bool:
    """Program `seed`'s `vjp`, `input_grad` and Jacobians against JAX's derivatives of the same
    program (tests/jax_reference.py; needs JAX): the default build's to JAX_RTOL, with `f32` an f32
    build's to F32_RTOL, with `library_directory` an AOT library's (`--entry vjp,jacobian`) to JAX_RTOL.
    On smooth programs with a finite loss (elsewhere the derivative at a kink is a convention, and
    spadc's are checked against its interpreter). Whether the program was checked."""
    import jax_reference
    generator, text, model = compiled_program(seed)
    inputs = inputs_for(seed, generator)
    if not generator.smooth or not np.isfinite(model.loss(**inputs)):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = spadc.check_text(text, f"fuzz{seed}.spad")
        builds = [("f64", model, JAX_RTOL)]
        if f32:
            builds.append(("f32", spadc.compile_source(text, name=f"fuzz{seed}.spad", dtype="f32"), F32_RTOL))
        if library_directory is not None:
            library = os.path.join(library_directory, f"fuzz{seed}.so")
            source = os.path.join(library_directory, f"fuzz{seed}.spad")
            with open(source, "w") as out:
                out.write(text)
            aot.build(source, library, entries=("vjp", "jacobian"))
            builds.append(("aot", spadrt.load(library), JAX_RTOL))
    oracle = jax_reference.jacobians(program, model, inputs)
    for build, built, rtol in builds:
        built.set_params(model.params)
        try:
            jax_reference.check_derivatives(built, program, inputs, np.random.default_rng(seed + 5), rtol,
                                            f"fuzz{seed} ({build})", value_rtol=min(rtol, F32_RTOL), oracle=oracle)
        except AssertionError as error:
            raise Mismatch(str(error)) from None
    return True


def _check_tiers(text, seed, inputs, model):
    """The program's quick code against its O3 code, each compiled under its policy, to the bit."""
    results = []
    for policy in ("quick", "optimised"):
        with _jit_policy(policy), warnings.catch_warnings():  # (kernels compile at their first call)
            warnings.simplefilter("ignore")
            # The same name (random streams are keyed by it), and a comment after the program: a
            # text of its own, so that neither build is the other's from the compiled-model cache.
            compiled = spadc.compile_source(f"{text}\n# {policy}\n", name=f"fuzz{seed}.spad", cache=False)
            compiled.set_params(model.params)
            forward = compiled.forward(**inputs, training=True, seed=seed, step=3)
            loss, grads = compiled.grad(**inputs, training=True, seed=seed, step=3)
        results.append([np.asarray(v).tobytes() for v in (forward.loss, *forward.outputs.values(), loss,
                                                           *grads.values())])
    if results[0] != results[1]:
        raise Mismatch("the quick tier's forward values or gradient differ from O3's in their bits")


@contextmanager
def _jit_policy(policy: str):
    saved = os.environ.get(tiers.ENVIRONMENT_VARIABLE)
    os.environ[tiers.ENVIRONMENT_VARIABLE] = policy
    try:
        yield
    finally:
        if saved is None:
            del os.environ[tiers.ENVIRONMENT_VARIABLE]
        else:
            os.environ[tiers.ENVIRONMENT_VARIABLE] = saved


def _check_tape(program):
    """No estimator keeps more than the exact adjoint (ESTIMATORS.md section 9), by the static count
    that the compiled code's own count equals (tests/test_memory.py)."""
    exact = plan_tape(gradient(program, accumulate=True)).static_bytes
    for policy in ("weights", "products", "edges"):
        sampled = plan_tape(gradient(program, accumulate=True, sampling=spadc.RAD(keep=0.5, policy=policy).sampling))
        if sampled.static_bytes > exact:
            raise Mismatch(f"RAD under `{policy}` keeps {sampled.static_bytes} bytes, exact {exact}")


def _check_batch(model, generator, seed):
    batch = inputs_for(seed, generator, BATCH)
    losses = model.loss(**batch, training=True, seed=seed)
    singles = [model.loss(**{k: v[s] for k, v in batch.items()}, training=True, seed=seed, sample_offset=s)
               for s in range(BATCH)]
    if not np.array_equal(losses, singles, equal_nan=True):
        raise Mismatch(f"batch losses {losses} against one by one {singles}")
    mean_loss, mean_grads = model.grad(**batch)
    one_by_one = [model.grad(**{k: v[s] for k, v in batch.items()})[1] for s in range(BATCH)]
    for name in mean_grads:
        _close(f"batch mean d loss / d {name}", mean_grads[name], np.mean([g[name] for g in one_by_one], axis=0), 1e-12)


def _check_lanes(text, model, generator, seed):
    """Built to run LANES samples side by side, whatever its ops (its runs then go lane by lane,
    as functions of their own: spadc/backend/outline.py), a program gives each sample's forward
    values to the bit, and the batch's mean gradient to rounding (sums over lanes go in another
    order), against the model as compiled by default."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lanes = spadc.compile_source(text, name=f"fuzz{seed}.spad", lanes=LANES)
    lanes.init_params(seed=seed)
    batch = inputs_for(seed, generator, BATCH)
    got, want = lanes.loss(**batch, training=True, seed=seed), model.loss(**batch, training=True, seed=seed)
    if not np.array_equal(got, want, equal_nan=True):
        raise Mismatch(f"losses with {LANES} lanes {got} against {want}")
    mean_loss, mean_grads = lanes.grad(**batch, training=True, seed=seed)
    want_loss, want_grads = model.grad(**batch, training=True, seed=seed)
    _close(f"batch loss with {LANES} lanes", mean_loss, want_loss, LANES_RTOL)
    for name in want_grads:
        _close(f"batch mean d loss / d {name} with {LANES} lanes", mean_grads[name], want_grads[name], LANES_RTOL)


def _check_sampled(model, inputs, grads, seed):
    """RAD at keep 1 is the exact gradient; RAD with one seed gives one answer (returned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, kept = model.grad(**inputs, estimator=spadc.RAD(keep=1.0), seed=seed)
        first = model.grad(**inputs, estimator=RAD_EDGES, seed=seed, step=1)
        again = model.grad(**inputs, estimator=RAD_EDGES, seed=seed, step=1)[1]
    for name in grads:
        if not np.array_equal(kept[name], grads[name], equal_nan=True):
            raise Mismatch(f"RAD keep 1 differs from exact for {name}")
        if not np.array_equal(first[1][name], again[name], equal_nan=True):
            raise Mismatch(f"RAD with one seed gave two answers for {name}")
    return first


def has_long_loop(program) -> bool:
    """A top-level loop that checkpointing would cut (spadc/backend/budget.py)."""
    return any(op.attrs["hi"] - op.attrs["lo"] >= budget.MIN_TRIPS for op in budget.top_level_loops(program))


def _check_checkpointed(text, seed, inputs, calls):
    """With its long top-level loops checkpointed (2 snapshots), a program's gradients keep every
    bit of the taped ones, dropout masks and RAD draws replayed from their keys (ESTIMATORS.md
    section 9): cut once (even seeds), or each step a segment of a binomial schedule (odd seeds).
    `calls`: [(grad's options, the taped (loss, grads))]. Whether it had such a loop."""
    if not has_long_loop(spadc.frontend.lower(spadc.check_text(text, f"fuzz{seed}.spad"))):
        return False
    with warnings.catch_warnings(), (_binomial_plans() if seed % 2 else nullcontext()):
        warnings.simplefilter("ignore")
        model = spadc.compile_source(text, name=f"fuzz{seed}.spad", checkpoint=2, cache=seed % 2 == 0)
        model.init_params(seed=seed)
        for options, (loss, grads) in calls:
            got_loss, got = model.grad(**inputs, seed=seed, **options)
            if np.float64(got_loss).tobytes() != np.float64(loss).tobytes() or any(
                    got[name].tobytes() != grads[name].tobytes() for name in grads):
                raise Mismatch(f"checkpointed gradient ({options}) differs from the taped one")
    return True


@contextmanager
def _binomial_plans():
    """`checkpoint=K` planned as a binomial schedule of K snapshots over every step of each long
    loop (the planner chooses one only under a budget, which also bounds the lanes, and lanes
    round sums otherwise); compiled models made meanwhile are kept apart from the others."""
    fixed_cuts, kept = budget.fixed_cuts, spadc.api._CACHE
    budget.fixed_cuts = lambda loops, snapshots: {k: Binomial(budget.trips(op), snapshots) for k, op in loops}
    spadc.api._CACHE = type(kept)()
    try:
        yield
    finally:
        budget.fixed_cuts, spadc.api._CACHE = fixed_cuts, kept


def _check_direction(model, inputs, params, grads, seed):
    direction = _direction(params, seed)

    def at(scale):  # training mode with one seed: dropout masks are fixed, so the loss is smooth
        return model.loss(params={k: v + scale * direction[k] for k, v in params.items()}, **inputs,
                          training=True, seed=seed, step=3)

    analytic = sum(float(np.sum(direction[k] * grads[k])) for k in params)
    _against_differences(at, analytic, "directional derivative")


def _against_differences(at, analytic: float, what: str):
    """`analytic` against fourth-order central differences of `at(scale)`, at steps from coarse to
    fine until one agrees: a wrong derivative disagrees at every step; truncation error shrinks
    with the step (a non-finite difference ends the check)."""
    differences = []
    for h in DIRECTION_STEPS:
        numeric = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
        if not np.isfinite(numeric):
            return
        if abs(numeric - analytic) <= DIRECTION_RTOL * (1 + abs(numeric) + abs(analytic)):
            return
        differences.append(f"{numeric} at step {h:g}")
    raise Mismatch(f"{what} {analytic} against central differences {', '.join(differences)}")


def _direction(params, seed) -> dict:
    rng = np.random.default_rng(seed + 2)
    return {k: rng.standard_normal(v.shape) for k, v in params.items()}


def _check_tangent(model, inputs, params, seed):
    """Forward mode's directional derivative of the loss against reverse mode's gradient: two
    transforms that share nothing but the activity analysis and the primal program."""
    direction = _direction(params, seed)
    exact = model.grad(**inputs)[1]
    dot = sum(float(np.sum(direction[k] * exact[k])) for k in params)
    tangent = model.jvp(direction, **inputs).loss_tangent
    if not (np.isfinite(dot) and np.isfinite(tangent)):
        return
    if abs(tangent - dot) > TANGENT_RTOL * (1 + abs(dot)):
        raise Mismatch(f"jvp's loss tangent {tangent} against <v, gradient> {dot}")


def _check_vjp(model, inputs, params, seed, smooth: bool):
    """`vjp` seeded on the loss and the output: its params' cotangents against forward mode (a
    dot-product test), its float inputs' against central differences of the forward pass."""
    rng = np.random.default_rng(seed + 3)
    cotangents = {"loss": rng.standard_normal(), "out": rng.standard_normal(np.shape(model.forward(**inputs).outputs["out"]))}
    result = model.vjp(cotangents, **inputs)
    direction = _direction(params, seed)
    product = model.jvp(direction, **inputs)
    forward = cotangents["loss"] * product.loss_tangent + float(np.sum(cotangents["out"] * product.tangents["out"]))
    reverse = sum(float(np.sum(direction[k] * result.params[k])) for k in params)
    if np.isfinite(forward) and np.isfinite(reverse) and abs(forward - reverse) > TANGENT_RTOL * (1 + abs(forward)):
        raise Mismatch(f"vjp's <params' cotangent, v> {reverse} against jvp's <cotangent, J v> {forward}")
    _check_jacobian(model, inputs, params, rng)
    if not smooth:
        return
    moves = {k: rng.standard_normal(np.shape(v)) for k, v in inputs.items() if k in result.inputs}

    def at(scale):
        out = model.forward(**dict(inputs, **{k: inputs[k] + scale * u for k, u in moves.items()}))
        return cotangents["loss"] * out.loss + float(np.sum(cotangents["out"] * out.outputs["out"]))

    _against_differences(at, sum(float(np.sum(result.inputs[k] * u)) for k, u in moves.items()),
                         "vjp's <inputs' cotangent, u>")


def _check_jacobian(model, inputs, params, rng):
    """The output's Jacobians (kernels of their own, by forward or reverse mode, whichever has fewer
    sweeps) against the VJP kernel, one sample: <ct, J u> = <J^T ct, u> along random ct and u, with
    respect to the float inputs and to the params (flat, in the layout's order); and the loss's
    row against `input_grad`."""
    cotangent = rng.standard_normal(np.shape(model.forward(**inputs).outputs["out"]))
    reverse = model.vjp({"out": cotangent}, **inputs)
    by_params = model.jacobian("out", "params", **inputs)
    flat = {p["name"]: (p["offset"], p["size"]) for p in model.layout["params"]}
    moves = {k: rng.standard_normal(np.shape(v)) for k, v in params.items()}
    flat_move = np.zeros(model.layout["param_count"])
    for k, u in moves.items():
        flat_move[flat[k][0]:flat[k][0] + flat[k][1]] = np.ravel(u)
    pairs = [(float(np.sum(cotangent * (by_params @ flat_move))),
              sum(float(np.sum(reverse.params[k] * u)) for k, u in moves.items()), "params")]
    if reverse.inputs:
        by_inputs = model.jacobian("out", "inputs", **inputs)
        moves = {k: rng.standard_normal(np.shape(v)) for k, v in reverse.inputs.items()}
        along = sum(np.tensordot(by_inputs[k], u, axes=np.ndim(u)) for k, u in moves.items())
        pairs.append((float(np.sum(cotangent * along)), sum(float(np.sum(reverse.inputs[k] * u))
                                                            for k, u in moves.items()), "inputs"))
    for paired, expected, wrt in pairs:
        if np.isfinite(paired) and np.isfinite(expected) and abs(paired - expected) > TANGENT_RTOL * (1 + abs(expected)):
            raise Mismatch(f"jacobian's <ct, J u> {paired} against vjp's <J^T ct, u> {expected} (wrt {wrt})")
    rows, grads = model.jacobian("loss", "inputs", **inputs), model.input_grad(**inputs)[1]
    for k in grads:
        if not np.allclose(rows[k], grads[k], rtol=TANGENT_RTOL, atol=TANGENT_RTOL, equal_nan=True):
            raise Mismatch(f"the loss's Jacobian row for `{k}` against input_grad")


def _check_hessian_product(model, inputs, params, seed):
    """H v against a fourth-order central difference of the compiled gradient along v, at steps from
    coarse to fine until one agrees (as _check_direction)."""
    direction = _direction(params, seed)
    product = model.hvp(direction, **inputs)
    names = sorted(params)
    analytic = np.concatenate([np.ravel(product[k]) for k in names])

    def gradient_at(scale):
        grads = model.grad(params={k: v + scale * direction[k] for k, v in params.items()}, **inputs)[1]
        return np.concatenate([np.ravel(grads[k]) for k in names])

    differences = []
    for h in DIRECTION_STEPS:
        numeric = (-gradient_at(2 * h) + 8 * gradient_at(h) - 8 * gradient_at(-h) + gradient_at(-2 * h)) / (12 * h)
        if not np.all(np.isfinite(numeric)):
            return
        scale = 1 + np.max(np.abs(numeric)) + np.max(np.abs(analytic))
        if np.max(np.abs(numeric - analytic)) <= DIRECTION_RTOL * scale:
            return
        differences.append(f"{numeric} at step {h:g}")
    raise Mismatch(f"Hessian product {analytic} against central differences of the gradient {', '.join(differences)}")


def _check_f32(text, seed, inputs, loss64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = spadc.compile_source(text, name=f"fuzz{seed}.spad", dtype="f32")
    model.init_params(seed=seed)
    loss32 = model.loss(**inputs)
    if abs(loss32 - loss64) > F32_RTOL * (1 + abs(loss64)):
        raise Mismatch(f"f32 loss {loss32} against f64 {loss64}")


# ---- mutants ------------------------------------------------------------------------------

MUTATION_TOKENS = ["+", "-", "*", "@", "^", "/", "//", "%", "(", ")", "[", "]", ",", ":", "..", "=", "{", "}", "\n",
                   ";", "0", "1", "-1", "2.5", "99999999999999999999", "1e308", "1e999", "9223372036854775807",
                   "N", "M", "T", "x", "k", "seq", "label", "p1", "h1", "i", "t", "sum", "max", "tanh", "eye", "while",
                   "zeros", "onehot", "dropout", "where", "transpose", "for", "in", "let", "if", "then", "else",
                   "and", "not", "true", "fn", "return", "loss", "output", "param", "input", "const", "import",
                   "axis=", "axis=5", "\"x.spad\"", "#", "f64[3]", "i64", "bool", "\t", "é", "\x00"]


SAME_CLASS = {  # replacements that keep a program parseable, so that the checker and backends are reached
    "name": ["N", "M", "T", "x", "k", "seq", "label", "p1", "p2", "h10", "out", "i", "t", "e", "pi", "sum", "tanh",
             "max", "softmax", "transpose", "eye", "onehot", "dropout", "cross_entropy", "reshape", "f0", "f1"],
    "number": ["0", "1", "2", "-1", "0.0", "1e308", "1e-320", "9223372036854775807", "4611686018427387904", "100000",
               "3", "0.5"],
    "operator": ["+", "-", "*", "/", "@", "^", "//", "%", "<", "==", "and"],
}
_TOKEN = re.compile(r"(?P<name>[A-Za-z_]\w*)|(?P<number>\d+(\.\d+)?([eE][+-]?\d+)?)|(?P<operator>//|[-+*/@^%<])")


def _replace_token(text: str, rng: np.random.Generator) -> str:
    tokens = [m for m in _TOKEN.finditer(text) if m.lastgroup in SAME_CLASS]
    if not tokens:
        return text
    token = tokens[int(rng.integers(len(tokens)))]
    options = SAME_CLASS[token.lastgroup]
    return text[:token.start()] + options[int(rng.integers(len(options)))] + text[token.end():]


def mutate(text: str, rng: np.random.Generator) -> str:
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(len(text)))
        roll = rng.random()
        if roll < 0.7:
            text = _replace_token(text, rng)
        elif roll < 0.8:
            text = text[:at] + text[at + int(rng.integers(1, 6)):]
        elif roll < 0.95:
            text = text[:at] + " " + MUTATION_TOKENS[int(rng.integers(len(MUTATION_TOKENS)))] + " " + text[at:]
        else:  # repeat a line
            lines = text.split("\n")
            line = int(rng.integers(len(lines)))
            lines.insert(line, lines[line])
            text = "\n".join(lines)
    return text


def check_mutant(seed: int) -> str:
    """A mutant of program `seed`: compiling and running it gives a result or a located SpadcError."""
    rng = np.random.default_rng(seed)
    generator = ProgramGenerator(seed)
    text = mutate(generator.program(), rng)
    name = f"mutant{seed}.spad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = spadc.compile_source(text, name=name)
            model.grad(**inputs_for(seed, generator))
        except spadc.SpadcError as error:
            message = str(error)
            if error.loc is not None and not message.startswith(f"{error.loc.file}:{error.loc.line}:{error.loc.col}: error: "):
                raise Mismatch(f"a badly placed error: {message}")
            if error.loc is None and not message.startswith(("missing input", "unknown input", "input `")):
                raise Mismatch(f"an error without a place: {message}")
    return text


# ---- the long profile ---------------------------------------------------------------------

PROGRAM_TIMEOUT = 120  # seconds one check may take before it counts as a hang


def _check_program_and_jax(seed: int):
    check_program(seed)
    import tempfile

    import jax  # (the JAX oracle's 64-bit floats, in this worker process)
    jax.config.update("jax_enable_x64", True)
    with tempfile.TemporaryDirectory() as directory:
        check_against_jax(seed, directory)


_CHECKS = {"programs": check_program, "mutants": check_mutant, "programs+jax": _check_program_and_jax}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no result within {PROGRAM_TIMEOUT} s")


def _run_share(kind: str, seeds: list[int]) -> list[tuple[str, int, str]]:
    """Check `seeds` in this process; the failures, as (kind, seed, message)."""
    signal.signal(signal.SIGALRM, _alarm)
    failures = []
    for seed in seeds:
        signal.alarm(PROGRAM_TIMEOUT)
        try:
            _CHECKS[kind](seed)
        except Exception as error:  # noqa: BLE001 - every failure is reported, whatever it is
            failures.append((kind, seed, f"{type(error).__name__}: {error}"))
            print(f"FAIL {kind} seed {seed}: {type(error).__name__}: {error}", flush=True)
            traceback.print_exc()
        finally:
            signal.alarm(0)
    return failures


def ir_digest(text: str, seed: int) -> str:
    """SHA-256 of the LLVM IR of every kernel of `text`'s builds with 1 and LANES lanes."""
    from spadc.frontend import text_source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        modules = [spadc.api.build(text_source(text, f"fuzz{seed}.spad"), ".", lanes=lanes).llvm_ir
                   for lanes in (1, LANES)]
    return hashlib.sha256("\n".join(modules).encode("utf-8")).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Differential fuzzing of spadc (the long profile).")
    parser.add_argument("--programs", type=int, default=10000)
    parser.add_argument("--mutants", type=int, default=None, help="default: as many as programs")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the seeds (one per core)")
    parser.add_argument("--ir-digests", metavar="OUT.json", help="write the programs' IR digests instead")
    parser.add_argument("--jax", action="store_true", help="check programs against JAX's derivatives too "
                        "(tests/jax_reference.py: three builds, about 7 s more a program)")
    args = parser.parse_args(argv)
    if args.ir_digests:
        seeds = range(args.first_seed, args.first_seed + args.programs)
        with open(args.ir_digests, "w") as out:
            json.dump({seed: ir_digest(ProgramGenerator(seed).program(), seed) for seed in seeds}, out, indent=0)
        return 0
    failures, started = [], time.perf_counter()
    totals = {"programs": args.programs, "mutants": args.programs if args.mutants is None else args.mutants}
    for kind, total in totals.items():
        seeds = list(range(args.first_seed, args.first_seed + total))
        chunks = [seeds[i:i + 100] for i in range(0, len(seeds), 100)]
        checked = "programs+jax" if kind == "programs" and args.jax else kind
        # Workers are replaced after every group of WORKER_TASKS chunks each (a fresh pool per
        # group): each LLVM optimisation run keeps some memory in the process (llvmlite's pass
        # pipeline, ~160 KB for a small kernel), which over thousands of programs adds up to
        # gigabytes. (ProcessPoolExecutor's own max_tasks_per_child hangs on Python 3.11.)
        # Workers are separate processes, so a crash in compiled code (a segfault) breaks the pool
        # and is reported as a failure instead of ending the run silently.
        group = WORKER_TASKS * max(args.workers, 1)
        done = 0
        for first in range(0, len(chunks), group):
            part = chunks[first:first + group]
            # (One worker too: in this process, a crash would end the run and memory would grow.)
            pool = concurrent.futures.ProcessPoolExecutor(max(args.workers, 1),
                                                          mp_context=multiprocessing.get_context("spawn"))
            with pool:
                results = pool.map(_run_share, [checked] * len(part), part)
                try:
                    for chunk, chunk_failures in zip(part, results):
                        failures += chunk_failures
                        done += len(chunk)
                        if done % 100 == 0 or done == total:  # every chunk: a stopped run says where it was
                            print(f"{kind}: {done} done, {len(failures)} failures, "
                                  f"{time.perf_counter() - started:.0f} s", flush=True)
                except concurrent.futures.process.BrokenProcessPool as error:
                    failures.append((kind, None, f"a worker crashed: {error}"))
                    print(f"FAIL {kind}: a worker crashed: {error}", flush=True)
    print(f"{totals['programs']} programs and {totals['mutants']} mutants in {time.perf_counter() - started:.0f} s: "
          f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
