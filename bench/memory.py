"""Experiment 3, memory: real bytes against what is learnt, exact against RAD and SPAD.

    python -m bench.experiments memory     (writes docs/results/memory.md and memory.png)

Three models: the 64-256-256-10 digits MLP, the IRNN reading upsampled digits row by row (28
steps), and reaction-diffusion over 10,000 steps. For each estimator and keep: the tape per sample
as the compiled code counted it on a training step, the peak workspace one gradient kernel call
allocates (the memory plan: tape and every temporary; models are compiled with one lane, the
least memory, so that the workspace is one sample's), the final loss and, for the classifiers,
the accuracy on the held-out digits (chance is 10%). When PyTorch is installed (the `peers`
extra), its saved-activation bytes for the same MLP and IRNN stand beside spadc's tape.
Every figure is determined by the seeds: rerunning the command reproduces the tables.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

import spadc
from spadrt.estimators import variant_key

from . import figures, saved_tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
KEEPS = (1.0, 0.3, 0.1, 0.03)
BATCH = 32
LANES = 1  # one sample at a time: the workspace figures are one sample's (more lanes hold that many)
SEED = 0


@dataclass
class Task:
    title: str
    model: object
    train: dict
    test: dict | None  # held-out data for accuracy (classifiers)
    steps: int
    lr: float
    batch: int | None  # None: the whole (one-sample) training set each step
    note: str = ""


def digits(split: str) -> dict:
    with np.load(os.path.join(EXAMPLES, "data", f"digits_{split}.npz")) as data:
        return {"x": data["x"], "label": data["label"]}


def digit_rows(split: str) -> dict:
    """Digits upsampled (linear) from 8x8 to 28x28, read as 28 rows of 28 pixels."""
    data = digits(split)
    source_axis, target_axis = np.linspace(0, 7, 8), np.linspace(0, 7, 28)
    images = data["x"].reshape(-1, 8, 8)
    rows = np.stack([[np.interp(target_axis, source_axis, row) for row in image] for image in images])
    full = np.stack([[np.interp(target_axis, source_axis, column) for column in image.T] for image in rows])
    return {"seq": full.transpose(0, 2, 1), "label": data["label"]}


def diffusion_task() -> Task:
    grid = np.arange(64) / 64
    u0 = 0.5 + 0.1 * np.cos(2 * np.pi * grid)
    model = spadc.compile_file(os.path.join(EXAMPLES, "reaction_diffusion_long.spad"), lanes=LANES)
    truth = {"source": 0.5 * np.sin(2 * np.pi * grid), "rate": 1.0}
    target = model.forward(u0=u0, target=np.zeros(64), params=truth).outputs["final"]
    return Task("Reaction-diffusion, 10,000 steps (fit the source to one trajectory)", model,
                {"u0": u0[None], "target": target[None]}, None, 40, 0.05, None,
                "Every residual of a step is an entry of the state u, or arithmetic on one, which the adjoint "
                "recomputes from u: the exact tape is u at each step (10,000 x 64 x 8 B) and the loss's 520 B. "
                "The only site of the `weights` policy, `rate * u[i]`, has its residual recomputed too: gating "
                "it would save nothing, so it is left exact (ESTIMATORS.md section 9) and RAD and SPAD are the "
                "exact gradient here, with its tape and its peak. Path sampling cannot save memory on this model.")


def tasks() -> list[Task]:
    return [
        Task("MLP 64-256-256-10 on the digits", spadc.compile_file(os.path.join(EXAMPLES, "mlp_digits.spad"),
                                                                   lanes=LANES),
             digits("train"), digits("test"), 500, 1e-3, BATCH),
        Task("IRNN, 28 rows of upsampled digits", spadc.compile_file(os.path.join(EXAMPLES, "irnn.spad"), lanes=LANES),
             digit_rows("train"), digit_rows("test"), 1000, 1e-3, BATCH),
        diffusion_task(),
    ]


def train(task: Task, estimator) -> tuple[float, float, float | None]:
    """(tape bytes per sample on the last step, final training loss, test accuracy or None)."""
    model = task.model
    model.init_params(SEED)
    optimizer = spadc.Adam(lr=task.lr)
    n = len(next(iter(task.train.values())))
    rng = np.random.default_rng(SEED)
    tape = 0.0
    for step in range(task.steps):
        picked = rng.choice(n, task.batch, replace=False) if task.batch else slice(None)
        inputs = {k: v[picked] for k, v in task.train.items()}
        options = {} if isinstance(estimator, spadc.SPAD) else {"step": step}
        _, grads, tape = model.flat_grad(estimator=estimator, seed=SEED, **options, **inputs)
        optimizer.step(model.flat_params, grads, task.lr)
        model.project_params()
    loss = float(np.mean(model.loss(**task.train)))
    accuracy = None
    if task.test is not None:
        logits = model.forward(**task.test).outputs["logits"]
        accuracy = float(np.mean(np.argmax(logits, axis=1) == task.test["label"]))
    return tape, loss, accuracy


def estimators_at(keep: float):
    if keep == 1.0:
        return [("exact", spadc.Exact())]
    return [("RAD", spadc.RAD(keep=keep)), ("SPAD", spadc.SPAD(keep=keep))]


def section(task: Task, points: dict) -> str:
    rows = [f"### {task.title}", "",
            f"Adam, lr {task.lr}, {task.steps} steps" + (f", minibatches of {task.batch}" if task.batch else "") +
            ". Tape: bytes per sample the compiled code counted on the last step (a SPAD step that follows "
            "its ranking). Workspace: the peak one gradient kernel call allocates." +
            (f" {task.note}" if task.note else ""), "",
            "| estimator | keep | tape per sample | of exact | peak workspace | of exact | final loss |"
            + (" test accuracy |" if task.test is not None else ""),
            "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if task.test is not None else "")]
    exact_tape = exact_workspace = None
    series = points.setdefault(task.title.split(",")[0], {})
    for keep in KEEPS:
        for name, estimator in estimators_at(keep):
            tape, loss, accuracy = train(task, estimator)
            workspace = task.model.layout["variants"][variant_key(estimator.sampling)]["workspace"]
            exact_tape, exact_workspace = exact_tape or tape, exact_workspace or workspace
            if name != "SPAD":
                series.setdefault("tape per sample", []).append((keep, tape))
                series.setdefault("peak workspace", []).append((keep, workspace))
            rows.append(f"| {name} | {keep} | {tape:,.0f} B | {100 * tape / exact_tape:.1f}% | {workspace:,} B | "
                        f"{100 * workspace / exact_workspace:.1f}% | {loss:.4g} |"
                        + (f" {100 * accuracy:.1f}% |" if accuracy is not None else ""))
            print(f"  {task.title[:24]}: {name} {keep} done", file=sys.stderr)
    return "\n".join(rows)


def run(write) -> None:
    points: dict = {}
    sections = [section(task, points) for task in tasks()]
    if saved_tensors.available():
        sections.append("### Beside PyTorch\n\nBytes per sample that the backward pass keeps, batch of "
                        f"{saved_tensors.BATCH}: PyTorch's saved tensors (`python -m bench.saved_tensors`: every "
                        "distinct storage autograd saves, parameters and inputs excepted) and spadc's tape.\n\n"
                        + saved_tensors.table())
    else:
        sections.append("### Beside PyTorch\n\nPyTorch is not installed here: `pip install -e '.[peers]'` and "
                        "rerun to add its saved-tensor bytes.")
    write("memory", "Experiment 3: memory", "python -m bench.experiments memory", " ".join(__doc__.split("\n\n")[2].split()), "\n\n".join(sections))
    figures.memory_figure(points, os.path.join(ROOT, "docs", "results", "memory.png"))
