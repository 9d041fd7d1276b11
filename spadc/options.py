"""Command-line options that configure the Python API's objects: estimators, optimisers, schedules,
preconditioners and `fit` itself.

Invariants:
- One set of defaults: an option the user did not give is not passed on, so the Python constructor
  or `fit` applies its own default; the help shows that default, read from the Python signature.
- One set of names: each option is the Python keyword with dashes (`--batch-size` for
  `batch_size=`); older spellings stay as aliases.
- An option that would be ignored (`--keep` with the exact gradient, `--damping` without
  `--precondition`, `--momentum` with Adam) is a usage error naming what it needs, never silently
  dropped.
"""

from __future__ import annotations

import argparse
import inspect

from spadrt import precondition as preconditioners
from spadrt.es import ES, PES
from spadrt.estimators import DRAWS, RAD, SCORES, SHARES, SITE_POLICIES, SPAD, SPAD_POLICIES, Exact
from spadrt.optim import OPTIMIZERS, CosineLR, StepLR
from spadrt.training import fit

PRECONDITIONERS = ("identity", "newton", "newton_cg", "diag_fisher", "kfac", "shampoo")

# The options of each group, by the Python keyword they are passed on as (their dest).
SAMPLED = ("keep", "draw", "share")  # RAD and SPAD; and `--sites`: SPAD's `sites=`, RAD's `policy=`
SPAD_ONLY = ("score", "refresh", "candidates", "floor")  # and `--rank`: SPAD's `policy=`
FORWARD_ONLY = ("sigma", "particles")
OPTIMIZER = ("lr", "momentum", "nesterov", "weight_decay", "betas", "eps")  # each optimiser takes some
SCHEDULES = {"step": ("gamma",), "cosine": ("t_max", "eta_min")}  # and `--step-size`, derived when absent
PRECONDITIONER = ("damping", "interval", "ema", "warmup")
FIT = ("epochs", "batch_size", "seed", "validation_split")


def python_default(function, keyword: str):
    """The default of `keyword` in `function`'s signature (a class: its constructor)."""
    return inspect.signature(function).parameters[keyword].default


def _option(group, flags, function, keyword, help_text, dest=None, **kwargs):
    """An option passed on as `keyword=` to `function`, absent from the namespace unless given
    (`dest`: its name there, when not the keyword's)."""
    default = python_default(function, keyword)
    shown = "none" if default is None else default
    group.add_argument(*flags, dest=dest or keyword, default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})",
                       **kwargs)


def _pair(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers separated by a comma, got {text!r}")
    return float(parts[0]), float(parts[1])


# ---- estimators --------------------------------------------------------------------------------

def add_estimator_options(command, default: str):
    """The estimator and its settings, named as in the Python API (ESTIMATORS.md)."""
    group = command.add_argument_group("estimator (RAD and SPAD)")
    group.add_argument("--estimator", choices=("exact", "rad", "spad", "es", "pes"), default=default,
                       help="gradient estimator (es, pes: evolution strategies, forward passes only)")
    _option(group, ["--keep"], RAD, "keep", "share of each site's entries kept", type=float)
    _option(group, ["--sites"], SPAD, "sites", "site policy: which edges are gated", choices=SITE_POLICIES)
    _option(group, ["--draw"], RAD, "draw", "how entries are drawn", choices=DRAWS)
    _option(group, ["--share"], RAD, "share", "one mask per sample, or per batch", choices=SHARES)
    spad = command.add_argument_group("SPAD only")
    _option(spad, ["--rank"], SPAD, "policy", "how ranked entries are followed", choices=SPAD_POLICIES, dest="rank")
    _option(spad, ["--score"], SPAD, "score", "what ranks entries at evaluation steps", choices=SCORES)
    _option(spad, ["--refresh"], SPAD, "refresh", "steps between evaluation steps", type=int)
    _option(spad, ["--candidates"], SPAD, "candidates", "RAD draws per paths evaluation (or best_of masks)", type=int)
    _option(spad, ["--floor"], SPAD, "floor", "uniform share mixed into importance sampling", type=float)
    es = command.add_argument_group("ES and PES only")
    es.add_argument("--sigma", type=float, default=argparse.SUPPRESS, help="standard deviation of the perturbations "
                    f"(default: {python_default(ES, 'sigma')} for es, {python_default(PES, 'sigma')} for pes)")
    _option(es, ["--particles"], ES, "particles", "perturbed copies of the params per step", type=int)


def estimator(args):
    """The estimator the options describe; options not given take the Python defaults."""
    if args.estimator == "exact":
        return Exact()
    if args.estimator == "rad":
        renamed = {"policy": args.sites} if "sites" in vars(args) else {}
        return RAD(**_given(args, SAMPLED), **renamed)
    if args.estimator in ("es", "pes"):
        return (ES if args.estimator == "es" else PES)(**_given(args, FORWARD_ONLY))
    renamed = {"policy": args.rank} if "rank" in vars(args) else {}
    return SPAD(**_given(args, SAMPLED + ("sites",) + SPAD_ONLY), **renamed)


# ---- training ----------------------------------------------------------------------------------

def add_training_options(train):
    _option(train, ["--epochs"], fit, "epochs", "passes over the data", type=int)
    _option(train, ["--batch-size", "--batch"], fit, "batch_size", "samples per minibatch", type=int)
    _option(train, ["--validation-split", "--val-split"], fit, "validation_split",
            "hold out this share of --data for validation (when --val is not given)", type=float, metavar="F")
    _option(train, ["--seed"], fit, "seed", "seed of the shuffles and of the estimator", type=int)
    group = train.add_argument_group("optimiser (defaults: the optimiser's own, as in Python)")
    _option(group, ["--optimizer"], fit, "optimizer", "the update rule", choices=sorted(OPTIMIZERS))
    group.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                       help="learning rate (default: the optimiser's: " + ", ".join(
                           f"{name} {python_default(OPTIMIZERS[name], 'lr')}" for name in sorted(OPTIMIZERS)) + ")")
    _option(group, ["--momentum"], OPTIMIZERS["sgd"], "momentum", "sgd: momentum", type=float)
    group.add_argument("--nesterov", action="store_true", default=argparse.SUPPRESS, help="sgd: Nesterov momentum")
    group.add_argument("--weight-decay", dest="weight_decay", type=float, default=argparse.SUPPRESS,
                       help="L2 penalty (adamw: decoupled); default: the optimiser's (adamw 0.01, others 0)")
    _option(group, ["--betas"], OPTIMIZERS["adam"], "betas", "adam, adamw: B1,B2", type=_pair)
    group.add_argument("--eps", type=float, default=argparse.SUPPRESS, help="adam, adamw, adagrad: the "
                       "denominator's epsilon; default: the optimiser's")
    group.add_argument("--schedule", choices=("none", "step", "cosine"), default="none",
                       help="learning-rate schedule, stepped per epoch (per step without data)")
    group.add_argument("--step-size", dest="step_size", type=int, default=argparse.SUPPRESS,
                       help="step: epochs between divisions (default: a third of the run; StepLR needs it in Python)")
    _option(group, ["--gamma"], StepLR, "gamma", "step: the factor", type=float)
    _option(group, ["--t-max"], CosineLR, "t_max", "cosine: the period in epochs; none: the run's length", type=int)
    _option(group, ["--eta-min"], CosineLR, "eta_min", "cosine: the smallest learning rate", type=float)
    group = train.add_argument_group("preconditioner (CURVATURE.md)")
    group.add_argument("--precondition", choices=PRECONDITIONERS, default=None,
                       help="precondition the gradient (the optimiser gets P g); default: none")
    base = preconditioners.Preconditioner
    _option(group, ["--damping"], base, "damping", "the preconditioner's damping", type=float)
    _option(group, ["--interval"], base, "interval", "steps between curvature updates", type=int, metavar="N")
    _option(group, ["--ema"], base, "ema", "decay of the running curvature (none: each update replaces it)",
            type=float)
    _option(group, ["--warmup"], base, "warmup", "steps of plain gradients first", type=int, metavar="N")


def _given(args, names) -> dict:
    given = vars(args)
    return {name: given[name] for name in names if name in given}


def _takes(function, keyword: str) -> bool:
    return keyword in inspect.signature(function).parameters


def optimizer(args):
    optimizer_class = OPTIMIZERS[getattr(args, "optimizer", python_default(fit, "optimizer"))]
    return optimizer_class(**{k: v for k, v in _given(args, OPTIMIZER).items() if _takes(optimizer_class, k)})


def schedule(args, length: int):
    if args.schedule == "step":
        return StepLR(**{"step_size": max(length // 3, 1), **_given(args, ("step_size",) + SCHEDULES["step"])})
    if args.schedule == "cosine":
        return CosineLR(**_given(args, SCHEDULES["cosine"]))
    return None


def preconditioner(args):
    if args.precondition is None:
        return None
    return preconditioners.NAMES[args.precondition](**_given(args, PRECONDITIONER))


def fit_options(args) -> dict:
    """`fit`'s own keywords that the user gave."""
    return _given(args, FIT)


# ---- options that would be ignored -------------------------------------------------------------

def _applies(args, option: str) -> str | None:
    """None when `option` means something with the others given, else what it needs."""
    if not hasattr(args, "estimator"):  # `spadc build`: its --keep and --sites shape the kernels it builds
        return None
    if option in OPTIMIZER:  # an optimiser's option applies when its constructor takes it
        takers = [name for name in sorted(OPTIMIZERS) if _takes(OPTIMIZERS[name], option)]
        chosen = getattr(args, "optimizer", python_default(fit, "optimizer"))
        return None if chosen in takers else "--optimizer " + " or ".join(takers)
    schedule_options = {option: kind for kind, options in SCHEDULES.items() for option in options}
    schedule_options["step_size"] = "step"
    if option in schedule_options:
        kind = schedule_options[option]
        return None if args.schedule == kind else f"--schedule {kind}"
    needs = [
        (SAMPLED + ("sites",), args.estimator in ("rad", "spad"), "--estimator rad or spad"),
        (SPAD_ONLY + ("rank",), args.estimator == "spad", "--estimator spad"),
        (FORWARD_ONLY, args.estimator in ("es", "pes"), "--estimator es or pes"),
        (PRECONDITIONER, getattr(args, "precondition", None) is not None, "--precondition"),
    ]
    for options, meaningful, needed in needs:
        if option in options and not meaningful:
            return needed
    return None


def reject_ignored(parser: argparse.ArgumentParser, args):
    """A usage error for the first option given that the others make meaningless."""
    for option in vars(args):
        needed = _applies(args, option)
        if needed is not None:
            parser.error(f"--{option.replace('_', '-')} applies only with {needed}: here it would be ignored")
