"""Memory against time for long loops (issue 24): spadc taped and checkpointed under budgets, RAD
and SPAD under the same budgets, JAX's scan and its square-root checkpoint, PyTorch with
torch.utils.checkpoint.

    python -m bench.long_loops [--steps 1e3,1e4,1e5,1e6] [--models reaction,rnn] [--plot FILE.png]

Two models of one loop each: reaction-diffusion (a periodic 1-D Fisher-KPP stencil over 1,024
cells, fitting a source term: its state and its tape per step are 8 KB) and a ReLU recurrent net
(32 units, weights 32x32, driven by sin(0.01 t): its tape per step is the state and the ReLU's
mask); the loss reads the final state. Each row runs in a process of its own, so
that its peak resident memory (`ru_maxrss`, measured, never computed) is its own: the interpreter,
the libraries, the compiled code and the gradient. Time is one gradient call after a warm-up
call (JAX's compile excluded). A `+cache` row loads kernels that a first process compiled into
the disk cache, as a training process does after `spadc build` or an earlier run: its peak memory
has no compiler in it. From 1e8 steps a spadc row is one call, without the warm-up. The gradient error is relative (L2) to spadc's exact gradient,
taped or checkpointed (the same bits). All rows of one model and length run on the first core,
one after the other. T = 1e8 takes about 15 minutes per spadc row: give it with --steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

N = 1024  # reaction-diffusion cells
H = 32  # recurrent units
SEED = 0
BUDGETS = ("64M", "16M")
TAPED_LIMIT = 4 << 30  # bytes of tape beyond which the taped rows are skipped (they would swap)
PYTHON_LOOP_LIMIT = 10**5  # steps beyond which PyTorch's Python loop is skipped (minutes per row)
SPAD_LIMIT = 10**6  # steps beyond which SPAD's rows are skipped
NO_WARM_UP = 10**8  # steps from which spadc's row is one call, not a warm-up and a timed call (minutes each)
CACHED = "+cache"  # a row whose kernels a previous process compiled into the disk cache


def reaction_source(steps: int) -> str:
    return f"""const N = {N}
const dx = 1.0 / N
input u0: f64[N]
input target: f64[N]
param source: f64[N] = 0
param rate: f64 = 1
let u = u0
for t in 0..{steps} {{
  u = [u[i] + 0.0001 * (0.0001 * (u[(i + N - 1) % N] - 2 * u[i] + u[(i + 1) % N]) / dx^2
                        + rate * u[i] * (1 - u[i]) + source[i]) for i in 0..N]
}}
loss mse(u, target)
"""


def rnn_source(steps: int) -> str:
    return f"""const H = {H}
input h0: f64[H]
input target: f64[H]
param W: f64[H, H] ~ normal(0, 0.17)
param b: f64[H]
param v: f64[H] ~ normal(0, 1)
let h = h0
for t in 0..{steps} {{
  h = relu(W @ h + b + v * sin(0.01 * float(t)))
}}
loss mse(h, target)
"""


def inputs(model: str) -> dict:
    rng = np.random.default_rng(SEED)
    if model == "reaction":
        return {"u0": rng.uniform(0, 1, N), "target": rng.uniform(0, 1, N)}
    return {"h0": rng.uniform(0, 1, H), "target": rng.uniform(0, 1, H)}


def params(model: str) -> dict:
    rng = np.random.default_rng(SEED + 1)
    if model == "reaction":
        return {"source": np.zeros(N), "rate": np.float64(1.0)}
    return {"W": rng.normal(0, 0.17, (H, H)), "b": np.zeros(H), "v": rng.normal(0, 1, H)}


# ---- one row, in a child process ------------------------------------------------------------

def spadc_row(model: str, steps: int, method: str) -> dict:
    import spadc
    source = (reaction_source if model == "reaction" else rnn_source)(steps)
    estimator, budget = None, None
    cached = method.endswith(CACHED)  # kernels loaded from the disk cache: no compiler run in the process
    method = method.removesuffix(CACHED)
    if method != "taped":
        kind, budget = method.split("@")
        estimator = {"exact": None, "rad": spadc.RAD(keep=0.1), "spad": spadc.SPAD(keep=0.1)}[kind]
    compiled = spadc.compile_source(source, name=f"{model}.spad", max_memory=budget, lanes=1, cache=cached,
                                    checkpoint="none" if method == "taped" else "auto")
    compiled.set_params(params(model))
    call = lambda: compiled.grad(**inputs(model), estimator=estimator, seed=SEED, threads=1, stats=True)  # noqa: E731
    if steps < NO_WARM_UP:
        call()
    start = time.perf_counter()
    _, grads, stats = call()
    return {"seconds": time.perf_counter() - start, "grads": {k: v.tolist() for k, v in grads.items()},
            "workspace": stats["peak_workspace_bytes"], "replays": stats["forward_replays"]}


def jax_row(model: str, steps: int, method: str) -> dict:
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)

    def step(state, t, p):
        if model == "reaction":
            lap = (jnp.roll(state, 1) - 2 * state + jnp.roll(state, -1)) * N * N
            return state + 0.0001 * (0.0001 * lap + p["rate"] * state * (1 - state) + p["source"])
        return jax.nn.relu(p["W"] @ state + p["b"] + p["v"] * jnp.sin(0.01 * t))

    def run(p, state, first, count):
        return jax.lax.scan(lambda s, t: (step(s, t, p), None), state, first + jnp.arange(count, dtype=jnp.float64))[0]

    def loss(p, x):
        state = x["u0" if model == "reaction" else "h0"]
        if method == "scan":
            state = run(p, state, 0.0, steps)
        else:  # square-root checkpointing: a scan of checkpointed scans
            inner = _divisor_near(steps, math.isqrt(steps))
            segment = jax.checkpoint(lambda s, k: (run(p, s, k * inner, inner), None))
            state = jax.lax.scan(segment, state, jnp.arange(steps // inner, dtype=jnp.float64))[0]
        return jnp.mean((state - x["target"]) ** 2)

    grad = jax.jit(jax.grad(loss))
    p = {k: jnp.asarray(v) for k, v in params(model).items()}
    x = {k: jnp.asarray(v) for k, v in inputs(model).items()}
    jax.block_until_ready(grad(p, x))
    start = time.perf_counter()
    grads = jax.block_until_ready(grad(p, x))
    return {"seconds": time.perf_counter() - start, "grads": {k: np.asarray(v).tolist() for k, v in grads.items()}}


def torch_row(model: str, steps: int, method: str) -> dict:
    import torch
    from torch.utils.checkpoint import checkpoint
    torch.set_num_threads(1)
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params(model).items()}
    x = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs(model).items()}
    inner = _divisor_near(steps, math.isqrt(steps))

    def segment(state, first):
        for t in range(first, first + inner):
            if model == "reaction":
                lap = (torch.roll(state, 1) - 2 * state + torch.roll(state, -1)) * N * N
                state = state + 0.0001 * (0.0001 * lap + p["rate"] * state * (1 - state) + p["source"])
            else:
                state = torch.relu(p["W"] @ state + p["b"] + p["v"] * math.sin(0.01 * t))
        return state

    def gradient():
        state = x["u0" if model == "reaction" else "h0"]
        for first in range(0, steps, inner):
            state = checkpoint(segment, state, first, use_reentrant=False)
        loss = torch.mean((state - x["target"]) ** 2)
        return torch.autograd.grad(loss, list(p.values()))

    gradient()
    start = time.perf_counter()
    grads = gradient()
    return {"seconds": time.perf_counter() - start, "grads": {k: g.numpy().tolist() for k, g in zip(p, grads)}}


def _divisor_near(n: int, wanted: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - wanted))


ROWS = {"spadc": spadc_row, "jax": jax_row, "torch": torch_row}


def child(spec: str) -> int:
    system, model, steps, method = json.loads(spec)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    result = ROWS[system](model, steps, method)
    result["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))
    return 0


# ---- the table ------------------------------------------------------------------------------

def methods(model: str, steps: int, systems: set[str]) -> list[tuple[str, str]]:
    tape_per_step = 8 * (N if model == "reaction" else 2 * H)
    rows = [("spadc", "taped")] if steps * tape_per_step <= TAPED_LIMIT else []
    # SPAD's evaluation steps run several adjoints: past SPAD_LIMIT steps its rows take many minutes.
    kinds = ("exact", "rad", "spad") if steps <= SPAD_LIMIT else ("exact", "rad")
    rows += [("spadc", f"{kind}@{budget}") for budget in BUDGETS for kind in kinds]
    rows.append(("spadc", f"exact@{BUDGETS[0]}{CACHED}"))
    if "jax" in systems:
        rows += ([("jax", "scan")] if steps * tape_per_step <= TAPED_LIMIT else []) + [("jax", "sqrt")]
    if "torch" in systems and steps <= PYTHON_LOOP_LIMIT:
        rows.append(("torch", "checkpoint"))
    return rows


def run_row(system: str, model: str, steps: int, method: str) -> dict | None:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryDirectory() as cache:
        command = [sys.executable, "-m", "bench.long_loops", "--child", json.dumps([system, model, steps, method])]
        where = dict(text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     env={**os.environ, "SPADC_CACHE_DIR": cache})
        if method.endswith(CACHED):  # a first process compiles the kernels into the cache
            subprocess.run(command, capture_output=True, **where)
        done = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, **where)
        out.seek(0)
        if done.returncode != 0:
            print(f"{system} {method} on {model} T={steps:.0e}: failed: {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return None
        return json.loads(out.read().strip().splitlines()[-1])


def relative_error(grads: dict, reference: dict) -> float:
    got = np.concatenate([np.ravel(grads[k]) for k in sorted(reference)])
    want = np.concatenate([np.ravel(reference[k]) for k in sorted(reference)])
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def available(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--steps", default="1e3,1e4,1e5,1e6", help="loop lengths, comma-separated")
    parser.add_argument("--models", default="reaction,rnn")
    parser.add_argument("--only", help="rows to run, comma-separated, e.g. 'spadc exact@64M,jax sqrt'")
    parser.add_argument("--plot", metavar="FILE.png", help="write memory and time against T")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)
    from .run import machine
    systems = {"spadc"} | {s for s, m in (("jax", "jax"), ("torch", "torch")) if available(m)}
    print(f"Machine: {machine()}; each row a process of its own, on one core\n")
    print("| model | T | method | peak RSS (MB) | workspace (MB) | replays | time (s) | gradient error |")
    print("|---|---|---|---|---|---|---|---|")
    points = {}
    for model in args.models.split(","):
        for steps in (int(float(s)) for s in args.steps.split(",")):
            reference = None
            for system, method in methods(model, steps, systems):
                if args.only and f"{system} {method}" not in args.only.split(","):
                    continue
                row = run_row(system, model, steps, method)
                if row is None:
                    continue
                if system == "spadc" and method in ("taped", f"exact@{BUDGETS[0]}") and reference is None:
                    reference = row["grads"]
                error = relative_error(row["grads"], reference) if reference else float("nan")
                workspace = f"{row['workspace'] / 2**20:.1f}" if "workspace" in row else ""
                print(f"| {model} | {steps:.0e} | {system} {method} | {row['rss'] / 2**20:.0f} | {workspace} | "
                      f"{row.get('replays', '')} | {row['seconds']:.3f} | {error:.1e} |", flush=True)
                points.setdefault(model, {}).setdefault(f"{system} {method}", []).append(
                    (steps, row["rss"] / 2**20, row["seconds"]))
    if args.plot:
        _plot(points, args.plot)
    return 0


def _plot(points: dict, path: str):
    from .figures import _pyplot, _save
    plt = _pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(len(points), 2, figsize=(11, 4 * len(points)), squeeze=False)
    for row, (model, series) in enumerate(points.items()):
        for label, values in series.items():
            steps, rss, seconds = zip(*values)
            axes[row][0].loglog(steps, rss, marker="o", label=label)
            axes[row][1].loglog(steps, seconds, marker="o", label=label)
        axes[row][0].set(title=f"{model}: peak resident memory", xlabel="steps T", ylabel="MB")
        axes[row][1].set(title=f"{model}: one gradient", xlabel="steps T", ylabel="seconds")
    axes[0][0].legend(fontsize=7)
    _save(plt, figure, path)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
