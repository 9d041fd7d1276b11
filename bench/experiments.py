"""Experiments that test the SPAD paper's claims with our own numbers.

    python -m bench.experiments optimisation | overfitting | memory | unrolled | budget | all

Each writes a Markdown table to docs/results/NAME.md. Tables hold no timings, only quantities that
the seeds determine, so rerunning a command reproduces its table (budget: given its step counts).

1. optimisation: Rosenbrock, Rastrigin, Ackley, Styblinski-Tang and sphere in d = 10, 100, 1000;
   the same Adam steps for every estimator: exact, RAD, SPAD importance and SPAD topk, at keep
   0.1, 0.3, 0.5, over 10 seeds (the site policy is `products`: these programs have no weights);
   its runs are spadc.sweep's, on a Ray cluster with `--ray [ADDRESS]`.
2. overfitting: the 64-256-256-10 digits MLP trained on 200 samples and tested on the other 1597:
   exact, dropout 0.5, RAD and SPAD at keep 0.1 and 0.3, 5 seeds; its runs are spadc.sweep's, on a
   Ray cluster with `--ray [ADDRESS]`.
3. memory (bench/memory.py): the digits MLP, an IRNN over rows of digits and reaction-diffusion
   over 10,000 steps, at keep 1, 0.3, 0.1, 0.03: tape per sample, peak workspace, and the loss and
   accuracy reached in a fixed budget; PyTorch's saved-tensor bytes beside them when installed.
4. unrolled (bench/unrolled.py): TBPTT, truncated ES and PES on influence balancing and a
   learning-rate schedule, and PES's unbiasedness over an episode.
5. budget (bench/budget.py): at one memory budget, a long-sequence IRNN trained for the same wall
   time by exact gradients with replays, RAD and SPAD without, and exact with fewer samples in
   flight. Its step counts are measured on the machine (the one column that is not reproduced).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

import spadc
from spadrt.estimators import SamplingWarning
from spadrt.training import Diverging, TrainingStopped

from . import figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")
EXAMPLES = os.path.join(ROOT, "examples")


def source(name: str, **consts) -> str:
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read()
    for const, value in consts.items():
        lines = [line for line in text.splitlines() if line.startswith(f"const {const} = ")]
        assert len(lines) == 1, (name, const)
        text = text.replace(lines[0], f"const {const} = {value}")
    return text


def write(name: str, title: str, command: str, description: str, body: str):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.md")
    with open(path, "w") as f:
        f.write(f"# {title}\n\nProduced by `{command}`.\n\n{description}\n\n{body}\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")


def mean_std(values) -> str:
    """mean ± standard deviation; a spread within floating-point rounding of the mean is shown as 0."""
    values = np.asarray(values, dtype=float)
    mean, spread = values.mean(), values.std()
    if spread <= 1e-12 * max(1.0, abs(mean)):
        spread = 0.0
    return f"{mean:.4g} ± {spread:.2g}"


# ---- 1. optimisation test functions ----------------------------------------------------------------

FUNCTIONS = {  # name: (example, Adam learning rate)
    "Rosenbrock": ("rosenbrock.spad", 0.01),
    "Rastrigin": ("rastrigin.spad", 0.05),
    "Ackley": ("ackley.spad", 0.05),
    "Styblinski-Tang": ("styblinski_tang.spad", 0.05),
    "sphere": ("sphere.spad", 0.05),
}
DIMENSIONS = (10, 100, 1000)
KEEPS = (0.1, 0.3, 0.5)
OPTIMISATION_SEEDS = range(10)
OPTIMISATION_STEPS = 300


def optimisation_columns():
    """(label, estimator, grid keys) of each column of the table: a spadc.sweep's cells."""
    yield "exact", "exact", {}
    for keep in KEEPS:
        yield f"RAD {keep}", "rad", {"keep": [keep], "policy": ["products"]}
    for keep in KEEPS:
        yield f"SPAD {keep}", "spad", {"keep": [keep], "sites": ["products"]}
    for keep in KEEPS:  # ranked from the exact gradient: better ranks, but the exact tape on evaluation steps
        yield f"SPAD grad-scored {keep}", "spad", {"keep": [keep], "sites": ["products"], "score": ["gradient"]}
    for keep in KEEPS:
        yield f"SPAD topk {keep}", "spad", {"keep": [keep], "sites": ["products"], "policy": ["topk"]}


def minimised(path: str, lr: float, estimator: str, grid: dict, cluster=None) -> dict[int, list]:
    """OPTIMISATION_STEPS Adam steps from each seed's initial point, in each dimension (a spadc.sweep
    of `fit(None, steps=)` runs): by d, each seed's (final objective, the objective before each
    step and after the last; NaN from a loss that is not finite on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Diverging)  # (a test function's climbs are part of the result)
        warnings.simplefilter("ignore", TrainingStopped)
        rows = spadc.sweep(path, None, {"N": list(DIMENSIONS), "lr": [lr], **grid}, estimator=estimator,
                           seeds=len(OPTIMISATION_SEEDS), steps=OPTIMISATION_STEPS, cluster=cluster)
    runs: dict[int, list] = {}
    for row in rows:
        whole = len(row["curve"]) == OPTIMISATION_STEPS
        final = row["eval_train_loss"] if whole else float("nan")
        curve = np.full(OPTIMISATION_STEPS + 1, np.nan)
        curve[:len(row["curve"])] = row["curve"]
        curve[-1] = final
        runs.setdefault(row["N"], []).append((final, curve))
    return runs


FIGURE_ESTIMATORS = ("exact", "RAD 0.1", "SPAD 0.1", "SPAD grad-scored 0.1", "RAD 0.3", "SPAD 0.3")


def optimisation(cluster=None):
    """Through spadc.sweep (a run per estimator, dimension and seed; on `cluster`'s workers when given)."""
    names = [name for name, _, _ in optimisation_columns()]
    sections, curves = [], {}
    for function, (example, lr) in FUNCTIONS.items():
        columns = {label: minimised(os.path.join(EXAMPLES, example), lr, estimator, grid, cluster)
                   for label, estimator, grid in optimisation_columns()}
        rows = [f"### {function} (Adam, lr {lr})", "", "| d | " + " | ".join(names) + " |",
                "|---:|" + "---:|" * len(names)]
        for d in DIMENSIONS:
            cells = [mean_std([final for final, _ in columns[label][d]]) for label in names]
            rows.append(f"| {d} | " + " | ".join(cells) + " |")
        curves[function] = {label: np.mean([curve for _, curve in columns[label][max(DIMENSIONS)]], axis=0)
                            for label in FIGURE_ESTIMATORS}
        print(f"  {function} done", file=sys.stderr)
        sections.append("\n".join(rows))
    write("optimisation", "Experiment 1: optimisation test functions", "python -m bench.experiments optimisation",
          f"Final objective after {OPTIMISATION_STEPS} Adam steps from the seeded initial point, mean ± standard "
          f"deviation over {len(OPTIMISATION_SEEDS)} seeds (the seed draws the initial point, except for "
          "Rosenbrock's fixed start at -1.2, and the estimator's random stream); each estimator's runs are a "
          "`spadc.sweep` over the dimension (the file's `N`) and the seeds. Site policy `products`, whose "
          "sites that would save no memory stay exact (ESTIMATORS.md section 9: on every function but "
          "Rosenbrock all of them, so there every estimator is the exact gradient); SPAD ranks its entries "
          "every 10 steps by the contributions observed on 8 RAD draws (its default, `score=\"paths\"`), "
          "with RAD's memory; \"grad-scored\" SPAD ranks them from the exact gradient "
          "(`score=\"gradient\"`), which needs the exact tape on those steps; topk uses the default scores. "
          "The minimum of every function is 0, except Styblinski-Tang's, -39.166 d. The figure "
          f"optimisation.png shows the mean objective per step in d = {max(DIMENSIONS)}.", "\n\n".join(sections))
    figures.optimisation_figure(curves, f"d = {max(DIMENSIONS)}, mean over {len(OPTIMISATION_SEEDS)} seeds",
                                os.path.join(RESULTS, "optimisation.png"))


# ---- 2. overfitting ---------------------------------------------------------------------------------

OVERFIT_TRAIN = 200
OVERFIT_SEEDS = range(5)
OVERFIT_EPOCHS = 150


def digits():
    with np.load(os.path.join(EXAMPLES, "data", "digits.npz")) as data:
        x, label = data["x"], data["label"]
    order = np.random.default_rng(2026).permutation(len(x))
    train, test = order[:OVERFIT_TRAIN], order[OVERFIT_TRAIN:]
    return {"x": x[train], "label": label[train]}, {"x": x[test], "label": label[test]}


def overfitting(cluster=None):
    """Through spadc.sweep (a run per configuration and seed; on `cluster`'s workers when given)."""
    train, test = digits()
    path = os.path.join(EXAMPLES, "mlp_digits.spad")
    common = dict(seeds=len(OVERFIT_SEEDS), epochs=OVERFIT_EPOCHS, batch_size=32, optimizer="adam", validation=test,
                  cluster=cluster)
    runs = spadc.sweep(path, train, {"P_DROP": [0.0, 0.5]}, estimator="exact", **common)  # Adam's lr: 1e-3
    runs += spadc.sweep(path, train, {"estimator": ["rad", "spad"], "keep": [0.1, 0.3]}, **common)
    plain = spadc.compile_file(path)
    one = {k: v[:1] for k, v in train.items()}
    exact_tape = plain.grad(inputs=one, stats=True)[2]["tape_bytes"]
    rows = ["| training | train CE | test CE | gap (test - train CE) | train accuracy | test accuracy | "
            "tape bytes per sample |", "|---|---:|---:|---:|---:|---:|---:|"]
    for cell in range(len(runs) // len(OVERFIT_SEEDS)):
        members = runs[cell * len(OVERFIT_SEEDS):(cell + 1) * len(OVERFIT_SEEDS)]
        first = members[0]
        keep = first.get("keep")
        label = (f"{first['estimator'].upper()} {keep}" if keep is not None else
                 "exact" if first["P_DROP"] == 0 else f"dropout {first['P_DROP']}")
        sampling_only = spadc.RAD(keep=keep) if keep is not None else spadc.Exact()  # SPAD's tape is RAD's
        tape = plain.grad(inputs=one, estimator=sampling_only, stats=True)[2]["tape_bytes"]
        columns = [[run["eval_train_loss"] for run in members], [run["val_loss"] for run in members],
                   [run["val_loss"] - run["eval_train_loss"] for run in members]]
        accuracies = [[run["train_accuracy"] for run in members], [run["val_accuracy"] for run in members]]
        rows.append(f"| {label} | " + " | ".join(mean_std(c) for c in columns) + " | " +
                    " | ".join(mean_std(100 * np.asarray(c)) + "%" for c in accuracies) + f" | {tape:,.0f} |")
    write("overfitting", "Experiment 2: overfitting", "python -m bench.experiments overfitting [--ray [ADDRESS]]",
          f"The 64-256-256-10 MLP of examples/mlp_digits.spad trained on {OVERFIT_TRAIN} digits for "
          f"{OVERFIT_EPOCHS} epochs (Adam, lr 1e-3, batch 32) and tested on the other {1797 - OVERFIT_TRAIN}; mean ± "
          f"standard deviation over {len(OVERFIT_SEEDS)} seeds (initialisation, shuffles, random streams), "
          "each configuration a `spadc.sweep` (dropout: the file's `P_DROP` set by the grid). "
          "Cross-entropies and accuracies are measured in evaluation mode. Tape bytes: per sample, as the "
          "compiled code counts them; SPAD's evaluation steps (one in 10, `score=\"paths\"`) keep RAD's tape "
          f"(the exact tape is {exact_tape:,.0f} bytes).", "\n".join(rows))


def _accuracy(model, data) -> float:
    from spadrt.training import accuracy
    return accuracy(model, data)


# ---- 3. memory: bench/memory.py ------------------------------------------------------------------------

def memory():
    from . import memory as experiment
    experiment.run(write)


def unrolled():
    from . import unrolled as experiment
    experiment.run(write)


def budget(seconds: float | None = None):
    from . import budget as experiment
    experiment.run(write, mean_std, **({} if seconds is None else {"seconds": seconds}))


SWEPT = ("optimisation", "overfitting")  # the experiments whose runs are spadc.sweep's (and so a cluster's)
EXPERIMENTS = {"optimisation": optimisation, "overfitting": overfitting, "memory": memory, "unrolled": unrolled,
               "budget": budget}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--seconds", type=float, help="budget: the wall time each arm trains for")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="optimisation, overfitting: their runs on a Ray cluster (alone: a Ray instance here)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", SamplingWarning)  # the tables are about these estimators as they are
    cluster = None if args.ray is None else spadc.Ray(None if args.ray == "local" else args.ray)
    for name, run in EXPERIMENTS.items():
        if args.name in (name, "all"):
            run(args.seconds) if name == "budget" else run(cluster) if name in SWEPT else run()
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
