"""The `spadc` command line (INTERFACE.md): `spadc` and `python -m spadc` are the same program.

Invariants:
- Exit 0 on success, 1 on a user error (one diagnostic on stderr, never a traceback), 2 on bad
  usage (argparse's own convention).
- Commands print results on stdout and diagnostics on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

from spadrt import limits
from spadrt.errors import SpadcWarning
from spadrt.estimators import DRAWS, SITE_POLICIES
from spadrt.optim import OPTIMIZERS
from spadrt.training import TrainingStopped

from . import api, options, passes
from . import commands as commands_
from .commands import EXIT_INTERRUPTED
from .errors import SpadcError


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows every option's default (and none for flags and required options)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.required or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Renamed(argparse.Action):
    """An old spelling: refused with the name to use instead (exit 2, like any usage error)."""

    def __init__(self, option_strings, dest, hint: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is no longer an option: {self.hint}")


def _model_options(command, out_help: str, inputs: bool = True):
    command.add_argument("file", metavar="FILE.spad")
    if inputs:
        command.add_argument("--inputs", metavar="IN.npz", help="inputs, one array per declared input (a leading "
                             "sample axis makes a batch); default: none")
    command.add_argument("--params", metavar="P.npz", help="parameter values; default: the initialisers")
    command.add_argument("--init-seed", type=int, default=0, help="seed of the initialisers")
    command.add_argument("--out", metavar="OUT.npz", help=out_help)
    command.add_argument("--threads", type=int, default=None, metavar="N",
                         help="cores a batch is spread over (the result is the same for any N); default: all")
    command.add_argument("--dtype", choices=api.DTYPES, default="f64", help="the float type of the whole program")
    command.add_argument("--no-cache", action="store_true",
                         help="compile afresh: neither read nor write the compile cache ($SPADC_CACHE_DIR, else "
                              "~/.cache/spadc)")
    _lanes_option(command)


def _lanes_option(command):
    command.add_argument("--lanes", type=int, default=None, metavar="N",
                         help="samples each kernel runs side by side (1: the least memory); default: up to 128 for "
                              "models with matrix products (16 where the params take at most 128 KB), fewer when the "
                              "workspace would pass 4 MB or --max-memory")


def _checkpoint_option(command):
    command.add_argument("--checkpoint", default="auto", metavar="auto|none|K",
                         help="when a gradient's tape would pass --max-memory: auto replays loop segments as few times "
                              "as fits; none refuses; K keeps K snapshots of each long loop")


def _estimator_options(command, default: str):
    options.add_estimator_options(command, default)
    command.add_argument("--policy", action=_Renamed, hint="the site policy is --sites, and SPAD's ranking rule "
                         "is --rank (as `sites=` and `policy=` in Python)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spadc", description="Compile and run .spad differentiable programs.",
                                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=_version())
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--max-memory", metavar="BYTES", default=None,
                        help=f"bytes params and a kernel's workspace may take, e.g. 4G; default: "
                             f"${limits.ENVIRONMENT_VARIABLE}, else the machine's memory")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, **kwargs):
        command = commands.add_parser(name, parents=[common], formatter_class=_Formatter, **kwargs)
        command.set_defaults(command_parser=command)  # usage errors found after parsing name the command
        return command

    check = add("check", help="parse and type-check a file: prints ok, or diagnostics and exits 1")
    check.add_argument("file", metavar="FILE.spad")
    check.set_defaults(run=commands_.check)

    ir = add("ir", help="print the IR of a file")
    ir.add_argument("file", metavar="FILE.spad")
    ir.add_argument("--dump-after", choices=passes.PASS_NAMES, default=None,
                    help="print the IR as it is after this pass; default: after the whole pipeline")
    ir.add_argument("--grad", action="store_true", help="print the gradient program (forward then adjoint)")
    _estimator_options(ir, default="exact")
    ir.set_defaults(run=commands_.ir)

    llvm = add("llvm", help="print the LLVM IR that is compiled")
    llvm.add_argument("file", metavar="FILE.spad")
    llvm.add_argument("--grad", action="store_true", help="the gradient kernel, not the forward kernel")
    llvm.add_argument("--optimised", action="store_true", help="the kernel's module after LLVM's optimisation")
    llvm.add_argument("--dtype", choices=api.DTYPES, default="f64", help="the float type of the whole program")
    llvm.set_defaults(run=commands_.llvm)

    run = add("run", help="evaluate a model: its loss and outputs")
    _model_options(run, "write the loss and outputs to this .npz file")
    run.set_defaults(run=commands_.run)

    grad = add("grad", help="the loss and the gradient of every param")
    _model_options(grad, "write the gradients to this .npz file")
    _estimator_options(grad, default="exact")
    grad.add_argument("--seed", type=int, default=0, help="seed of the estimator's random stream")
    grad.add_argument("--draws", type=int, default=0, metavar="N",
                      help="draw N estimates and test them against the exact gradient (0: one estimate)")
    _checkpoint_option(grad)
    grad.set_defaults(run=commands_.grad)

    train = add("train", help="train a model on data from a .npz file")
    _model_options(train, "write the parameters to this .npz file after every epoch (a checkpoint)", inputs=False)
    train.add_argument("--data", metavar="D.npz", help="training data: one array per input, the first axis "
                       "being the sample (required when the model has inputs)")
    train.add_argument("--steps", type=int, default=None, metavar="N",
                       help="for a model without inputs: N optimiser steps (instead of --data and --epochs)")
    train.add_argument("--horizon", type=int, default=None, metavar="H",
                       help="for a model with `state` and --steps: carry the state from call to call, resetting it "
                            "every H calls (an episode); default: every call starts from the initial values")
    train.add_argument("--val", metavar="V.npz", help="validation data, as --data")
    _estimator_options(train, default="exact")
    options.add_training_options(train)
    train.add_argument("--plot", metavar="CURVE.png", help="write the loss curves to this PNG")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--inputs", action=_Renamed, hint="training data comes from --data (and --val)")
    _checkpoint_option(train)
    _cluster_options(train)
    train.set_defaults(run=commands_.train)

    sweep = add("sweep", help="train once per cell of a grid of settings and per seed: a CSV, a table, a plot")
    sweep.add_argument("file", metavar="FILE.spad")
    sweep.add_argument("--data", metavar="D.npz", help="training data, as for train")
    sweep.add_argument("--val", metavar="V.npz", help="validation data, as --data")
    sweep.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2",
                       help="a setting and its values (repeat for more): an estimator's (keep, sigma...), the "
                            "optimiser's (lr...), fit's (epochs, batch_size), or estimator=rad,spad")
    sweep.add_argument("--seeds", type=int, default=3, help="runs per cell, seeds 0..N-1")
    sweep.add_argument("--estimator", choices=("exact", "rad", "spad", "es", "pes"), default="exact",
                       help="the estimator of cells that do not set one")
    sweep.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam", help="the update rule")
    sweep.add_argument("--epochs", type=int, default=5, help="passes over the data per run")
    sweep.add_argument("--batch-size", "--batch", type=int, default=32, help="samples per minibatch")
    sweep.add_argument("--steps", type=int, default=None, metavar="N",
                       help="optimiser steps per run of a model without inputs (it takes no --data)")
    sweep.add_argument("--out", required=True, metavar="SWEEP.csv", help="one line per run")
    sweep.add_argument("--plot", metavar="SWEEP.png", help="each cell's train loss per epoch, its mean over seeds")
    _cluster_options(sweep)
    sweep.set_defaults(run=commands_.sweep)

    build = add("build", help="compile ahead of time to a shared library or an object file")
    build.add_argument("file", metavar="FILE.spad")
    build.add_argument("-o", "--output", required=True, metavar="OUT.so|OUT.o", help="the library or object")
    build.add_argument("--header", metavar="OUT.h", help="also write a C header declaring the entry points and layout")
    build.add_argument("--target", help="an LLVM target triple, e.g. aarch64-linux-gnu, thumbv7em-none-eabihf, "
                       "riscv32-unknown-elf; default: this machine")
    build.add_argument("--cpu", help="the CPU to tune for; default: this machine's, or generic for --target")
    build.add_argument("--linker", metavar="CC", help="the C compiler that links a .so for --target "
                       "(e.g. aarch64-linux-gnu-gcc); default: $CC, else cc, for this machine only")
    build.add_argument("--dtype", choices=api.DTYPES, default="f64", help="the float type of the whole program")
    build.add_argument("--estimators", default="exact,rad,spad", help="gradient kernels to include "
                       "(comma-separated of exact, rad, spad)")
    build.add_argument("--entry", default="", metavar="vjp,jacobian,particles", help="more kernels to include "
                       "(comma-separated): vjp (Model.vjp, input_grad), jacobian (Model.jacobian), particles "
                       "(ES and PES)")
    build.add_argument("--keep", type=float, default=0.1, help="keep of the rad and spad kernels")
    build.add_argument("--sites", choices=SITE_POLICIES, default="weights", help="site policy")
    build.add_argument("--draw", choices=DRAWS, default="with_replacement", help="how entries are drawn")
    build.add_argument("--policy", action=_Renamed, hint="the site policy is --sites")
    _checkpoint_option(build)
    build.set_defaults(run=commands_.build)

    curv = add("curv", help="curvature of the loss: the Hessian's top eigenvalue and its trace (Hutchinson)")
    _model_options(curv, "write the estimates to this .npz file")
    curv.add_argument("--samples", type=int, default=100, metavar="N", help="Rademacher probes of the trace")
    curv.add_argument("--iters", type=int, default=100, metavar="N", help="power iterations at most")
    curv.add_argument("--seed", type=int, default=0, help="seed of the probes and of the power iteration's start")
    curv.set_defaults(run=commands_.curv)

    mem = add("mem", help="tape bytes per site, exact and under an estimator")
    mem.add_argument("file", metavar="FILE.spad")
    mem.add_argument("--dtype", choices=api.DTYPES, default="f64", help="the float type the bytes are counted in")
    _lanes_option(mem)
    _estimator_options(mem, default="rad")
    _checkpoint_option(mem)
    mem.set_defaults(run=commands_.mem)
    return parser


def _cluster_options(command):
    command.add_argument("--ray", nargs="?", const=commands_.LOCAL_RAY, default=None, metavar="ADDRESS",
                         help="run on Ray: alone, a Ray instance on this machine; or a cluster's address "
                              "(auto, ray://host:port); needs spadc[ray]")
    command.add_argument("--workers", type=int, default=None, metavar="N",
                         help="with --ray: workers, one CPU each (default: one per CPU of the cluster)")


def _version() -> str:
    import platform

    import llvmlite
    import llvmlite.binding as llvm

    from . import __version__
    llvm_version = ".".join(map(str, llvm.llvm_version_info))
    return (f"spadc {__version__} (llvmlite {llvmlite.__version__}, LLVM {llvm_version}, NumPy {np.__version__}, "
            f"Python {platform.python_version()})")


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    text = str(message)
    return f"{text}\n" if issubclass(category, SpadcWarning) else f"warning: {text}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _plain_warning
    warnings.filterwarnings("ignore", category=TrainingStopped)  # `spadc train` reports it as its error
    args = _parser().parse_args(argv)
    options.reject_ignored(args.command_parser, args)
    try:
        if args.max_memory is not None:  # every later check reads the limit from the environment
            os.environ[limits.ENVIRONMENT_VARIABLE] = str(limits.parse_bytes(args.max_memory, "--max-memory"))
        return args.run(args)
    except SpadcError as error:
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spadc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
