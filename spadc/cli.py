"""The `spadc` command line (INTERFACE.md): `spadc` and `python -m spadc` are the same program.

Invariants:
- Exit 0 on success, 1 on a user error (one diagnostic on stderr, never a traceback), 2 on bad
  usage (argparse's own convention).
- Commands print results on stdout and diagnostics on stderr.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings

import numpy as np

from spadrt import limits
from spadrt.errors import SpadcWarning
from spadrt.diagnostics import POOLED_BOUND, POWER_TARGET, diagnose
from spadrt.files import check_writable, read_npz, save_npz
from spadrt.estimators import DRAWS, RAD, SITE_POLICIES, SPAD, Exact
from spadrt.optim import OPTIMIZERS, CosineLR, StepLR
from spadrt.plot import loss_curve
from spadrt.training import Interrupted

from . import api, frontend, memreport, passes
from .errors import SpadcError
from .ir.printer import format_program

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _check(args) -> int:
    frontend.lower(frontend.check_file(args.file))
    print("ok")
    return 0


def _ir(args) -> int:
    if args.grad or args.estimator != "exact":
        compiled = api.build_file(args.file)
        program = compiled.gradient_program(_estimator(args).sampling).program
    else:
        program = frontend.lower(frontend.check_file(args.file), dump_after=args.dump_after)
    sys.stdout.write(format_program(program))
    return 0


def _llvm(args) -> int:
    compiled = api.build_file(args.file, args.dtype)
    if args.optimised:
        sys.stdout.write(compiled.machine.optimised_ir)
    else:
        sys.stdout.write(compiled.functions["grad" if args.grad else "forward"] + "\n")
    return 0


def _load_npz(path: str | None, what: str, names=None) -> dict:
    return read_npz(path, what, names) if path is not None else {}


def _input_names(model) -> list[str]:
    return [spec["name"] for spec in model.layout["inputs"]]


def _model_with_params(args):
    if args.out:
        check_writable(args.out)
    model = api.compile_file(args.file)
    model.init_params(args.init_seed)
    if args.params:
        model.load(args.params)
    return model


def _print_array(name: str, value: np.ndarray):
    with np.printoptions(precision=6, suppress=True, threshold=20, edgeitems=3, linewidth=100):
        print(f"{name} = {value}")


def _run(args) -> int:
    model = _model_with_params(args)
    result = model.forward(inputs=_load_npz(args.inputs, "inputs", _input_names(model)))
    _print_array("loss", np.asarray(result.loss))
    for name, value in result.outputs.items():
        _print_array(name, value)
    if args.out:
        save_npz(args.out, {"loss": np.asarray(result.loss), **result.outputs}, "results")
    return 0


def _estimator(args):
    """The estimator the command line describes (defaults as in the Python API)."""
    if args.estimator == "exact":
        return Exact()
    options = {"keep": args.keep}
    if args.policy:
        options["policy" if args.estimator == "rad" else "sites"] = args.policy
    if args.draw:
        options["draw"] = args.draw
    return RAD(**options) if args.estimator == "rad" else SPAD(**options)


def _grad(args) -> int:
    model = _model_with_params(args)
    inputs = _load_npz(args.inputs, "inputs", _input_names(model))
    estimator = _estimator(args)
    if args.draws:
        return _diagnose(model, estimator, args, inputs)
    loss, grads, stats = model.grad(inputs=inputs, estimator=estimator, seed=args.seed, stats=True)
    print(f"loss = {loss:.10g}")
    width = max((len(n) for n in grads), default=0)
    for name, value in grads.items():
        print(f"d loss / d {name:<{width}}  shape {list(value.shape)}  norm {np.linalg.norm(value):.6g}")
    print(f"tape: {stats['tape_bytes']:,.0f} bytes per sample")
    if args.out:
        save_npz(args.out, grads, "gradients")
    return 0


def _diagnose(model, estimator, args, inputs) -> int:
    report = diagnose(model, estimator, draws=args.draws, seed=args.seed, inputs=inputs)
    print(f"{args.draws} draws of {args.estimator} (seeds derived from {args.seed}) against the exact gradient")
    width = max((len(n) for n in report), default=0)
    print(f"{'param':<{width}}  {'|exact|':>10}  {'|mean|':>10}  {'|mean - exact|':>14}  {'mean stderr':>11}  "
          f"{'max z':>6}")
    for name, d in report.items():
        print(f"{name:<{width}}  {np.linalg.norm(d.exact):10.4g}  {np.linalg.norm(d.mean):10.4g}  {d.distance:14.4g}  "
              f"{float(d.stderr.mean()):11.4g}  {d.max_z:6.2f}")
    print(f"largest z over every coordinate: {report.max_z:.2f} (bound {report.coordinate_bound:.2f})")
    print(f"pooled z along the exact gradient: {report.pooled_z:.2f} (99.9% bound {POOLED_BOUND:.2f}); "
          f"a 5% bias would add {report.power:.1f}")
    verdict = "no evidence of bias" if report.unbiased else "BIASED: a statistic is past its bound"
    if report.unbiased and report.power < POWER_TARGET:
        verdict += f" (but too few draws to see a 5% bias reliably: try --draws {draws_needed(report)})"
    print(verdict)
    return 0


def draws_needed(report) -> int:
    """The draws that would bring a 5% bias to POWER_TARGET standard errors."""
    return int(np.ceil(report.draws * (POWER_TARGET / report.power) ** 2))


def _train(args) -> int:
    if args.plot:
        check_writable(args.plot, "plot")
    model = _model_with_params(args)
    data = _load_npz(args.data, "data", _input_names(model))
    validation = None
    if args.val:
        validation = _load_npz(args.val, "validation data", _input_names(model))
    elif args.val_split:
        if not 0 < args.val_split < 1:
            raise SpadcError(f"--val-split must be in (0, 1), got {args.val_split}")
        data, validation = _split(data, args.val_split, args.seed)
    optimizer = OPTIMIZERS[args.optimizer](lr=args.lr)
    schedule = {"none": None, "cosine": CosineLR(), "step": StepLR(step_size=max(args.epochs // 3, 1), gamma=0.1)}
    checkpoint = (lambda epoch, history: model.save(args.out)) if args.out else None
    try:
        history = model.fit(data, epochs=args.epochs, batch_size=args.batch, optimizer=optimizer,
                            estimator=_estimator(args), validation=validation, seed=args.seed,
                            schedule=schedule[args.schedule], quiet=args.quiet, on_epoch=checkpoint)
    except Interrupted as interrupted:
        saved = f"; the last checkpoint is {args.out}" if args.out and interrupted.history.train_loss else ""
        print(f"spadc train: {interrupted.where}{saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.plot and history.train_loss:
        curves = {"train": history.train_loss}
        if history.val_loss:
            curves["val"] = history.val_loss
        loss_curve(args.plot, curves)
    summary = f"trained {history.steps} steps in {history.seconds:.1f} s; final train loss {history.train_loss[-1]:.4f}" \
        if history.train_loss else "no epoch completed"
    print(summary)
    if history.val_loss:
        print(f"validation loss {history.val_loss[-1]:.4f}")
    if history.val_accuracy:
        print(f"test accuracy {100 * history.val_accuracy[-1]:.2f}%")
    if history.tape_bytes is not None:
        print(f"tape: {history.tape_bytes:,.0f} bytes per sample")
    if history.stopped:
        print(f"error: {history.stopped}", file=sys.stderr)
        return 1
    return 0


def _split(data: dict, share: float, seed: int) -> tuple[dict, dict]:
    counts = {len(v) for v in data.values()}
    if len(counts) != 1:
        raise SpadcError("the data's arrays have different numbers of samples")
    n = counts.pop()
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * (1 - share)))
    return ({k: v[order[:cut]] for k, v in data.items()}, {k: v[order[cut:]] for k, v in data.items()})


def _build(args) -> int:
    from . import aot
    estimators = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    layout = aot.build(args.file, args.output, header=args.header, target=args.target, cpu=args.cpu,
                       dtype=args.dtype, estimators=estimators, keep=args.keep, policy=args.policy or "weights",
                       draw=args.draw or "with_replacement")
    kernels_built = ", ".join(e["symbol"] for e in layout["variants"].values())
    print(f"built {args.output} ({args.target or 'host'}, {args.dtype}): {layout['forward']['symbol']}, {kernels_built}")
    if args.header:
        print(f"wrote {args.header}")
    return 0


def _mem(args) -> int:
    compiled = api.build_file(args.file)
    estimator = _estimator(args)
    if estimator.sampling is None:
        raise SpadcError("spadc mem compares the exact tape with an estimator's: give --estimator rad or spad "
                         "with --keep below 1")
    label = f"{args.estimator} (keep {estimator.keep})"
    sys.stdout.write(memreport.report(compiled, estimator.sampling, label,
                                      estimator if isinstance(estimator, SPAD) else None))
    return 0


def _add_model_options(command):
    command.add_argument("file", metavar="FILE.spad")
    command.add_argument("--inputs", metavar="IN.npz", help="inputs, one array per declared input (a leading "
                         "sample axis makes a batch)")
    command.add_argument("--params", metavar="P.npz", help="parameter values (default: the initialisers)")
    command.add_argument("--init-seed", type=int, default=0, help="seed of the initialisers (default 0)")
    command.add_argument("--out", metavar="OUT.npz", help="write the results (train: the parameters, after "
                         "every epoch) to this file")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spadc", description="Compile and run .spad differentiable programs.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--max-memory", metavar="BYTES", default=None,
                        help=f"bytes params and a kernel's workspace may take, e.g. 4G (default: "
                             f"${limits.ENVIRONMENT_VARIABLE}, else the machine's memory)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser = functools.partial(commands.add_parser, parents=[common])

    check = commands.add_parser("check", help="parse and type-check a file: prints ok, or diagnostics and exits 1")
    check.add_argument("file", metavar="FILE.spad")
    check.set_defaults(run=_check)

    ir = commands.add_parser("ir", help="print the IR of a file")
    ir.add_argument("file", metavar="FILE.spad")
    ir.add_argument("--dump-after", choices=passes.PASS_NAMES, default=None,
                    help="print the IR as it is after this pass (default: after the whole pipeline)")
    ir.add_argument("--grad", action="store_true", help="print the gradient program (forward then adjoint)")
    _add_estimator_options(ir, default="exact")
    ir.set_defaults(run=_ir)

    llvm = commands.add_parser("llvm", help="print the LLVM IR that is compiled")
    llvm.add_argument("file", metavar="FILE.spad")
    llvm.add_argument("--grad", action="store_true", help="the gradient kernel (default: the forward kernel)")
    llvm.add_argument("--optimised", action="store_true", help="the whole module after LLVM's optimisation")
    llvm.add_argument("--dtype", choices=api.DTYPES, default="f64")
    llvm.set_defaults(run=_llvm)

    run = commands.add_parser("run", help="evaluate a model: its loss and outputs")
    _add_model_options(run)
    run.set_defaults(run=_run)

    grad = commands.add_parser("grad", help="the loss and the gradient of every param")
    _add_model_options(grad)
    _add_estimator_options(grad, default="exact")
    grad.add_argument("--seed", type=int, default=0, help="seed of the estimator's random stream")
    grad.add_argument("--draws", type=int, default=0, metavar="N",
                      help="draw N estimates and report their mean, standard error and distance to the exact gradient")
    grad.set_defaults(run=_grad)

    train = commands.add_parser("train", help="train a model on data from a .npz file")
    _add_model_options(train)
    train.add_argument("--data", required=True, metavar="D.npz", help="training data: one array per input, "
                       "the first axis being the sample")
    train.add_argument("--val", metavar="V.npz", help="validation data, as --data")
    train.add_argument("--val-split", type=float, default=0.0, metavar="F",
                       help="hold out this share of --data for validation (when --val is not given)")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--schedule", choices=("none", "step", "cosine"), default="none")
    _add_estimator_options(train, default="exact")
    train.add_argument("--seed", type=int, default=0, help="seed of the shuffles and of the estimator")
    train.add_argument("--plot", metavar="CURVE.png", help="write the loss curves to this PNG")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    build = commands.add_parser("build", help="compile ahead of time to a shared library or an object file")
    build.add_argument("file", metavar="FILE.spad")
    build.add_argument("-o", "--output", required=True, metavar="OUT.so|OUT.o")
    build.add_argument("--header", metavar="OUT.h", help="also write a C header declaring the entry points and layout")
    build.add_argument("--target", help="an LLVM target triple, e.g. aarch64-linux-gnu, thumbv7em-none-eabihf, "
                       "riscv32-unknown-elf (default: this machine)")
    build.add_argument("--cpu", help="the CPU to tune for (default: this machine's, or generic for --target)")
    build.add_argument("--dtype", choices=api.DTYPES, default="f64", help="the float type of the whole program")
    build.add_argument("--estimators", default="exact,rad,spad", help="gradient kernels to include "
                       "(comma-separated of exact, rad, spad; default all)")
    build.add_argument("--keep", type=float, default=0.1, help="keep of the rad and spad kernels (default 0.1)")
    build.add_argument("--policy", choices=SITE_POLICIES, default=None, help="site policy (default weights)")
    build.add_argument("--draw", choices=DRAWS, default=None, help="how entries are drawn (default with_replacement)")
    build.set_defaults(run=_build)

    mem = commands.add_parser("mem", help="tape bytes per site, exact and under an estimator")
    mem.add_argument("file", metavar="FILE.spad")
    _add_estimator_options(mem, default="rad")
    mem.set_defaults(run=_mem)
    return parser


def _add_estimator_options(command, default: str):
    command.add_argument("--estimator", choices=("exact", "rad", "spad"), default=default,
                         help=f"gradient estimator (default {default})")
    command.add_argument("--keep", type=float, default=0.1, help="fraction of each site's entries kept (default 0.1)")
    command.add_argument("--policy", choices=SITE_POLICIES, default=None, help="site policy (default weights)")
    command.add_argument("--draw", choices=DRAWS, default=None, help="how entries are drawn (default with_replacement)")


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    text = str(message)
    return f"{text}\n" if issubclass(category, SpadcWarning) else f"warning: {text}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _plain_warning
    args = _parser().parse_args(argv)
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
