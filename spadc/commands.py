"""What each `spadc` command does, given its parsed arguments (the parser is spadc/cli.py).

Invariants:
- A command returns its exit status (0, or 1 for a user error it reports itself) or raises
  `SpadcError`; results go to stdout, diagnostics to stderr.
- Output paths are checked writable before any work, and written atomically (spadrt.files).
"""

from __future__ import annotations

import sys

import numpy as np

from spadrt import curvature
from spadrt.arguments import user_inputs
from spadrt.diagnostics import POOLED_BOUND, POWER_TARGET, diagnose
from spadrt.errors import SpadcWarning, render
from spadrt.estimators import SPAD
from spadrt.files import check_writable, read_npz, save_npz
from spadrt.plot import loss_curve, require_matplotlib
from spadrt.training import Interrupted, fit

from . import api, frontend, memreport, passes
from .ad.reverse import gradient
from .passes import PASS_NAMES, hoist
from . import options as options_
from .backend import jit
from .errors import SpadcError
from .ir.printer import format_program

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def check(args) -> int:
    program = frontend.lower(frontend.check_file(args.file))
    _warn_if_the_gradient_cannot_fit(program)
    print("ok")
    return 0


def _warn_if_the_gradient_cannot_fit(program):
    """The exact gradient's workspace, one sample at a time (its least), against the memory limit:
    the program is valid, but `spadc grad` and `train` would checkpoint its loops, or refuse it
    (spadc/backend/budget.py). No LLVM is run."""
    import warnings

    from spadrt import limits
    from .backend import budget
    limit = limits.max_memory(None)
    try:
        _, plan = budget.plan_gradient(program, limit, "auto", budget.differentiated)
    except SpadcError as error:
        warnings.warn(SpadcWarning(render(f"the program is valid, but {error.bare_message}", error.loc, kind="warning")))
        return
    if plan.cuts:
        loop = budget.top_level_loops(program)[min(plan.cuts)]
        warnings.warn(SpadcWarning(render(
            f"the exact gradient's tape needs a workspace of {limits.format_bytes(plan.taped_workspace)}, more than "
            f"{limits.limit_text(limit)}: gradients will be checkpointed ({'; '.join(plan.describe(program))})",
            loop.loc, kind="warning")))


def ir(args) -> int:
    if args.estimator in ("es", "pes"):
        raise SpadcError("ES and PES run the forward program only (with perturbed params): it has no gradient program; "
                         "`spadc ir FILE` prints the forward program")
    if args.estimator != "exact":  # a sampled adjoint: of the program as written
        compiled = api.build_file(args.file)
        sys.stdout.write(format_program(compiled.gradient_program(options_.estimator(args).sampling).program))
        return 0
    program = frontend.lower(frontend.check_file(args.file), dump_after=None if args.grad else args.dump_after)
    split = hoist.split(program) if args.grad or args.dump_after in (None, PASS_NAMES[-1]) else None
    if split is None:
        if args.grad:
            program = api.build_file(args.file).gradient_program(None).program
        sys.stdout.write(format_program(program))
        return 0
    # The kernels' view: what depends on params alone once per call, then the samples (and, for
    # the gradient, the hoisted values' adjoint once after them).
    parts = [("once per call, before the samples (hoisted: depends on params alone)", split.prologue)]
    if args.grad:
        parts += [("per sample; the adjoints of the hoisted values are summed over the samples",
                   passes.run(gradient(split.per_sample, accumulate=True).program)),
                  ("once per call, after the samples: the hoisted values' adjoint, to the params",
                   passes.run(gradient(split.product, accumulate=True).program))]
    else:
        parts.append(("per sample; its params after the user's are the prologue's outputs ^0, ^1, ..., in order", split.per_sample))
    sys.stdout.write("\n".join(f"# {title}\n{format_program(part)}" for title, part in parts))
    return 0


def llvm(args) -> int:
    compiled = api.build_file(args.file, args.dtype)
    kind = "grad" if args.grad else "forward"
    if args.optimised:
        sys.stdout.write(str(jit.optimise(compiled.function_ir(kind), jit.native_target())))
    else:
        sys.stdout.write(compiled.function_ir(kind) + "\n")
    return 0


def _load_npz(path: str | None, what: str, names=None, unknown: str = "error") -> dict:
    return read_npz(path, what, names, unknown=unknown) if path is not None else {}


def _load_data(path: str, what: str, model) -> dict:
    """A data file: arrays named after inputs (others are warned about and skipped), each of shape
    [samples, *the input's shape]; a mismatch names the file's shapes."""
    data = _load_npz(path, what, _input_names(model), unknown="warn")
    for spec in user_inputs(model.layout):
        array = data.get(spec["name"])
        if array is not None and list(array.shape[1:]) != spec["shape"]:
            shapes = ", ".join(f"`{name}` {list(value.shape)}" for name, value in data.items())
            raise SpadcError(f"{path}: array `{spec['name']}` has shape {list(array.shape)}, but the model's input is "
                             f"{spec['dtype']}{spec['shape']}, so the {what} needs [samples, "
                             f"{', '.join(map(str, spec['shape']))}]".replace(", ]", "]") + f" (the file holds {shapes})")
    return data


def _input_names(model) -> list[str]:
    return [spec["name"] for spec in user_inputs(model.layout)]


def _model_with_params(args):
    if args.out:
        check_writable(args.out)
    model = api.compile_file(args.file, dtype=args.dtype, cache=not args.no_cache, lanes=args.lanes,
                             checkpoint=getattr(args, "checkpoint", "auto"))
    model.init_params(args.init_seed)
    if args.params:
        model.load(args.params)
    return model


def _print_array(name: str, value: np.ndarray):
    with np.printoptions(precision=6, suppress=True, threshold=20, edgeitems=3, linewidth=100):
        print(f"{name} = {value}")


def run(args) -> int:
    model = _model_with_params(args)
    result = model.forward(inputs=_load_npz(args.inputs, "inputs", _input_names(model)), threads=args.threads)
    _print_array("loss", np.asarray(result.loss))
    for name, value in result.outputs.items():
        _print_array(name, value)
    if args.out:
        save_npz(args.out, {"loss": np.asarray(result.loss), **result.outputs}, "results")
    return 0


def grad(args) -> int:
    model = _model_with_params(args)
    inputs = _load_npz(args.inputs, "inputs", _input_names(model))
    estimator = options_.estimator(args)
    if args.draws:
        return _diagnose(model, estimator, args, inputs)
    loss, grads, stats = model.grad(inputs=inputs, estimator=estimator, seed=args.seed, stats=True,
                                    threads=args.threads)
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
    if not np.isfinite(report.power):
        verdict = "every draw is the exact gradient (the estimator gates nothing here): there is no bias to test"
    elif report.unbiased and report.power < POWER_TARGET:
        verdict += f" (but too few draws to see a 5% bias reliably: try --draws {draws_needed(report)})"
    print(verdict)
    return 0


def draws_needed(report) -> int:
    """The draws that would bring a 5% bias to POWER_TARGET standard errors."""
    return int(np.ceil(report.draws * (POWER_TARGET / report.power) ** 2))


def train(args) -> int:
    if args.plot:
        check_writable(args.plot, "plot")
        require_matplotlib(args.plot)
    model = _model_with_params(args)
    if not user_inputs(model.layout):
        return _train_without_inputs(model, args)
    if args.data is None:
        raise SpadcError(f"{args.file} has inputs ({', '.join(_input_names(model))}): give the training data "
                         f"with --data D.npz")
    _refuse_steps_with_data(args)
    data = _load_data(args.data, "data", model)
    if args.val and "validation_split" in vars(args):
        raise SpadcError("give validation data by --val or --validation-split, not both")
    validation = _load_data(args.val, "validation data", model) if args.val else None
    return _fit(model, args, data, validation=validation, horizon=args.horizon)


def _refuse_steps_with_data(args):
    """A model with inputs trains for epochs over its data; --steps would be silently ignored."""
    if args.steps is not None:
        raise SpadcError(f"{args.file} has inputs, so it trains for --epochs N over --data; --steps N is for a "
                         f"model without inputs")


def _train_without_inputs(model, args) -> int:
    """A model without inputs (a test function, a simulation fitted to constants): --steps steps."""
    if args.data is not None or args.val is not None:
        raise SpadcError(f"{args.file} has no inputs, so it takes no data: train it with --steps N")
    if args.steps is None:
        raise SpadcError(f"{args.file} has no inputs: give the number of optimiser steps with --steps N")
    for option in ("epochs", "batch_size", "validation_split"):
        if option in vars(args):
            raise SpadcError(f"{args.file} has no inputs, so --{option.replace('_', '-')} means nothing: it trains "
                             f"for --steps N")
    return _fit(model, args, None, steps=args.steps, horizon=args.horizon)


def _fit(model, args, data, **options) -> int:
    given = {**options_.fit_options(args), **options}
    length = given.get("steps") or given.get("epochs") or options_.python_default(fit, "epochs")
    checkpoint = (lambda epoch, history: model.save(args.out)) if args.out else None
    try:
        history = model.fit(data, optimizer=options_.optimizer(args), estimator=options_.estimator(args),
                            schedule=options_.schedule(args, length), quiet=args.quiet, on_epoch=checkpoint,
                            threads=args.threads, precondition=options_.preconditioner(args),
                            cluster=_cluster(args), **given)
    except Interrupted as interrupted:
        saved = f"; the last checkpoint is {args.out}" if args.out and interrupted.history.train_loss else ""
        print(f"spadc train: {interrupted.where}{saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.plot and history.train_loss:
        curves = {"train": history.train_loss}
        if history.val_loss:
            curves["val"] = history.val_loss
        loss_curve(args.plot, curves, xlabel="epoch" if data is not None else "step")
    summary = f"trained {history.steps} steps in {history.seconds:.1f} s; final train loss {history.train_loss[-1]:.4f}" \
        if history.train_loss else "no epoch completed"
    print(summary)
    if history.val_loss:
        print(f"validation loss {history.val_loss[-1]:.4f}")
    if history.val_accuracy:
        print(f"validation accuracy {100 * history.val_accuracy[-1]:.2f}%")
    if history.tape_bytes is not None:
        print(f"tape: {history.tape_bytes:,.0f} bytes per sample")
    if history.stopped:
        print(f"error: {history.stopped}", file=sys.stderr)
        return 1
    return 0


def _cluster(args):
    """The spadc.Ray of `--ray [ADDRESS] --workers N`, or None."""
    if args.ray is None:
        if args.workers is not None:
            raise SpadcError("--workers counts a cluster's workers: give --ray [ADDRESS] too")
        return None
    from .cluster import Ray
    return Ray(address=None if args.ray == LOCAL_RAY else args.ray, workers=args.workers)


LOCAL_RAY = "local"  # what `--ray` alone means: a Ray instance on this machine


def sweep(args) -> int:
    from . import sweeps
    for path, what in ((args.out, "table"), (args.plot, "plot")):
        if path:
            check_writable(path, what)
    if args.plot:
        require_matplotlib(args.plot)
    model = api.compile_file(args.file)
    if not user_inputs(model.layout):
        if args.data is not None or args.val is not None:
            raise SpadcError(f"{args.file} has no inputs, so it takes no data: sweep it with --steps N")
        if args.steps is None:
            raise SpadcError(f"{args.file} has no inputs: give each run's number of optimiser steps with --steps N")
        data = validation = None
    elif args.data is None:
        raise SpadcError(f"{args.file} has inputs ({', '.join(_input_names(model))}): give the training data "
                         f"with --data D.npz")
    else:
        _refuse_steps_with_data(args)
        data = _load_data(args.data, "data", model)
        validation = _load_data(args.val, "validation data", model) if args.val else None
    grid = dict(_grid_axis(text) for text in args.grid)
    cluster = _cluster(args)
    try:
        rows = sweeps.sweep(args.file, data, grid, estimator=args.estimator, seeds=args.seeds, cluster=cluster,
                            optimizer=args.optimizer, epochs=args.epochs, batch_size=args.batch_size,
                            validation=validation, steps=args.steps)
    finally:
        if cluster is not None:
            cluster.close()
    sweeps.write_csv(rows, args.out)
    print(sweeps.summary(rows))
    if args.plot:
        sweeps.plot(rows, args.plot)
    return 0


def _grid_axis(text: str) -> tuple[str, list]:
    """`NAME=V1,V2,...` as (name, values): integers, numbers, or names (an estimator's)."""
    name, _, values = text.partition("=")
    if not name or not values:
        raise SpadcError(f"--grid takes NAME=V1,V2,... (for example keep=0.1,0.3), got {text!r}")

    def value(item: str):
        for kind in (int, float):
            try:
                return kind(item)
            except ValueError:
                pass
        return item
    return name.replace("-", "_"), [value(item) for item in values.split(",")]


def curv(args) -> int:
    model = _model_with_params(args)
    inputs = _load_npz(args.inputs, "inputs", _input_names(model))
    top = curvature.top_eigenvalue(model, iters=args.iters, seed=args.seed, inputs=inputs, threads=args.threads)
    trace, error = curvature.hutchinson_trace(model, args.samples, seed=args.seed, inputs=inputs, threads=args.threads)
    print(f"parameters: {model.layout['param_count']:,}")
    print(f"top Hessian eigenvalue (power iteration, {args.iters} iterations at most): {top:.6g}")
    print(f"Hessian trace (Hutchinson, {args.samples} probes): {trace:.6g} +- {error:.2g} (one standard error)")
    if args.out:
        save_npz(args.out, {"top_eigenvalue": np.asarray(top), "trace": np.asarray(trace),
                            "trace_stderr": np.asarray(error)}, "curvature estimates")
    return 0


def build(args) -> int:
    from . import aot
    estimators = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    entries = tuple(e.strip() for e in args.entry.split(",") if e.strip())
    layout = aot.build(args.file, args.output, header=args.header, target=args.target, cpu=args.cpu,
                       dtype=args.dtype, estimators=estimators, keep=args.keep, policy=args.sites, draw=args.draw,
                       linker=args.linker, entries=entries, checkpoint=args.checkpoint)
    kernels_built = ", ".join(e["symbol"] for e in [*layout["variants"].values(), *layout["kernels"].values()])
    print(f"built {args.output} ({args.target or 'host'}, {args.dtype}): {layout['forward']['symbol']}, {kernels_built}")
    if args.header:
        print(f"wrote {args.header}")
    return 0


def mem(args) -> int:
    compiled = api.build_file(args.file, args.dtype, lanes=args.lanes, checkpoint=args.checkpoint)
    estimator = options_.estimator(args)
    if estimator.sampling is None:
        raise SpadcError("spadc mem compares the exact tape with an estimator's: give --estimator rad or spad "
                         "with --keep below 1 (ES keeps no tape at all)")
    label = f"{args.estimator} (keep {estimator.keep})"
    sys.stdout.write(memreport.report(compiled, estimator.sampling, label,
                                      estimator if isinstance(estimator, SPAD) else None))
    return 0
