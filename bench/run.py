"""Benchmark: spadc against peers, side by side in one process, on one core.

    python bench/run.py [--out bench/results.md] [--quick]

The process pins itself to one core before any system starts (`os.sched_setaffinity`), so every
system runs on one core, thread pools included (XLA's Eigen pool, PyTorch's intra-op threads);
only the "all cores" rows lift the pin. Arrays are converted to each system's type before timing,
and every system's loss and gradient are checked against spadc's before anything is timed.

Cases: Rosenbrock in d = 1000; the 64-256-256-10 MLP of examples/mlp_digits.spad at batch 1, 32
and 256; the IRNN of examples/irnn.spad with T = 100 (H = 64, 28 features) at batch 16; the LSTM
of examples/lstm.spad (T = 12, H = 16) at batch 32; the Gaussian mixture of examples/gmm.spad per data
point against bench/gmm_whole.spad (bench/hoisting.py); bundle adjustment's objective and the
Gaussian mixture at D = 10, K = 25 against JAX (bench/bundle_adjustment.py, bench/gmm.py). Peers: a
hand-written NumPy gradient (Rosenbrock, MLP), JAX (`jit(value_and_grad)`) and PyTorch (eager),
when installed (`pip install -e '.[peers]' jax`). Then spadc's RAD and SPAD at keep 0.1 against
its exact gradient, spadc on all cores against one, and compile times: cold (a fresh process, the
disk cache off), warm (a fresh process, the cache filled) and JAX's first call.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import spadc  # noqa: E402
from bench import bundle_adjustment, gmm, hoisting, peers  # noqa: E402
from bench.experiments import source  # noqa: E402

AGREEMENT = 1e-9  # relative agreement of every system's loss and gradient with spadc's
ROUNDS = 5  # the systems of a case, or the estimators, are timed in turn this many times
CORE_ROUNDS = 15  # one core and all cores are timed in turn this many times (the fastest rounds kept)
COMPILES = 3  # fresh processes per compile figure (the median reported)
SEED = 0
ALL_CORES = sorted(os.sched_getaffinity(0))


def timed(fn, budget: float) -> float:
    """Median seconds per call, over 7 repeats of as many calls as fit in a tenth of the budget."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < budget / 10:
        fn()
        calls += 1
    per_repeat = max(calls, 1)
    samples = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(per_repeat):
            fn()
        samples.append((time.perf_counter() - start) / per_repeat)
    return float(np.median(samples))


def _check(name, result, reference):
    loss, grads = result
    reference_loss, reference_grads = reference
    assert abs(loss - reference_loss) <= AGREEMENT * max(1.0, abs(reference_loss)), (name, loss, reference_loss)
    for key, value in reference_grads.items():
        scale = max(1.0, float(np.abs(value).max()))
        assert float(np.abs(np.asarray(grads[key]) - value).max()) <= AGREEMENT * scale, (name, key)


def cases():
    """(label, peer model name, spadc model, params, inputs)."""
    rng = np.random.default_rng(SEED)
    rosenbrock = spadc.compile_file(os.path.join(ROOT, "bench", "rosenbrock_1000.spad"))
    yield "Rosenbrock d=1000", "rosenbrock", rosenbrock, {"x": rosenbrock.params["x"].copy()}, {}
    mlp = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad"))
    mlp.init_params(SEED)
    for batch in (1, 32, 256):
        inputs = {"x": rng.standard_normal((batch, 64)), "label": rng.integers(0, 10, batch)}
        yield f"MLP 64-256-256-10, batch {batch}", "mlp", mlp, {k: v.copy() for k, v in mlp.params.items()}, inputs
    irnn = spadc.compile_source(source("irnn.spad", T=100), name="irnn_100.spad")
    irnn.init_params(SEED)
    inputs = {"seq": rng.uniform(0, 1, (16, 100, 28)), "label": rng.integers(0, 10, 16)}
    yield "IRNN T=100 H=64, batch 16", "irnn", irnn, {k: v.copy() for k, v in irnn.params.items()}, inputs
    lstm = spadc.compile_file(os.path.join(ROOT, "examples", "lstm.spad"))
    lstm.init_params(SEED)
    inputs = {"seq": rng.standard_normal((32, 12, 4)), "target": rng.standard_normal(32)}
    yield "LSTM T=12 H=16 (tuples, concat), batch 32", "lstm", lstm, {k: v.copy() for k, v in lstm.params.items()}, inputs


def interleaved(functions: dict, budget: float) -> dict:
    """Seconds per call of each function: timed in turn ROUNDS times (`timed` with a ROUNDS-th of
    the budget each), the fastest round kept. A neighbour's load on this shared machine comes and
    goes and only ever slows a round down: in turn, it hits every function alike rather than the
    one that ran at the time (RAD showed 0.67x exact in one run timed one after the other, and
    1.10x in a run that kept the median round), and the fastest round is the one it spared."""
    samples = {key: [] for key in functions}
    for _ in range(ROUNDS):
        for key, function in functions.items():
            samples[key].append(timed(function, budget / ROUNDS))
    return {key: float(np.min(values)) for key, values in samples.items()}


def peer_rows(budget: float) -> list[dict]:
    rows = []
    for label, name, model, params, inputs in cases():
        reference = model.grad(**inputs, threads=1)
        systems = [("spadc", (lambda: model.grad(**inputs, threads=1), lambda: model.loss(**inputs, threads=1)))]
        if name == "rosenbrock":
            systems.append(("NumPy (hand-written gradient)", peers.numpy_rosenbrock(params)))
        elif name == "mlp":
            systems.append(("NumPy (hand-written gradient)", peers.numpy_mlp(params, inputs)))
        jax_fns = peers.jax_case(name, params, inputs)
        if jax_fns:
            systems.append((f"JAX {peers.jax_version()} jit", jax_fns[:2]))
        torch_fns = peers.torch_case(name, params, inputs)
        if torch_fns:
            systems.append((f"PyTorch {peers.torch_version()} eager", torch_fns))
        for system, (grad, _) in systems[1:]:
            result = grad()
            _check(f"{label}/{system}", (result[0], {k: np.asarray(v) for k, v in result[1].items()}), reference)
        times = interleaved({(system, kind): function for system, functions in systems
                             for kind, function in zip(("gradient", "forward"), functions)}, budget)
        rows += [dict(case=label, system=system, forward=times[system, "forward"], gradient=times[system, "gradient"])
                 for system, _ in systems]
    return rows


def cores_figures(budget: float) -> tuple[float, float]:
    """Seconds per MLP batch-256 gradient on one core and on all, measured by a child process
    before any peer is loaded here (see `cores_child`)."""
    return tuple(float(t) for t in subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--cores-child", str(3 * budget), ",".join(map(str, ALL_CORES))],
        capture_output=True, text=True, check=True).stdout.split())


def spadc_rows(budget: float, one: float, every: float) -> list[str]:
    """Estimators against exact, and all cores against one (`cores_figures`)."""
    mlp = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad"))
    rng = np.random.default_rng(SEED)
    lines = ["| case | spadc variant | gradient (µs) | against |", "|---|---|---:|---:|"]
    inputs = {"x": rng.standard_normal((32, 64)), "label": rng.integers(0, 10, 32)}
    # RAD keeping one entry per site (keep 0.001): what RAD costs besides its sampled weight gradients.
    # SPAD between evaluation steps: refresh so long that only its first step (untimed) evaluates.
    between = spadc.SPAD(keep=0.1, refresh=10**9)
    mlp.grad(**inputs, estimator=between, threads=1)
    estimators = {"exact": None, "RAD keep 0.1": spadc.RAD(keep=0.1), "RAD keep 0.001": spadc.RAD(keep=0.001),
                  "SPAD keep 0.1": spadc.SPAD(keep=0.1), "SPAD keep 0.1, between evaluation steps": between}
    times = interleaved({label: (lambda estimator=estimator: mlp.grad(**inputs, estimator=estimator, threads=1))
                         for label, estimator in estimators.items()}, budget)
    exact = times["exact"]
    lines.append(f"| MLP, batch 32 | exact | {exact * 1e6:.1f} | 1 |")
    for label in list(estimators)[1:]:
        lines.append(f"| MLP, batch 32 | {label} | {times[label] * 1e6:.1f} | {times[label] / exact:.2f}x exact |")
    lines.append(f"| MLP, batch 256 | exact, 1 core | {one * 1e6:.1f} | 1 |")
    lines.append(f"| MLP, batch 256 | exact, {len(ALL_CORES)} cores | {every * 1e6:.1f} | "
                 f"{one / every:.2f}x the throughput |")
    return lines


def cores_child(budget: float, cores: list[int]):
    """One core against all, in a process of its own, run before the parent loads any peer: the
    peers' thread pools (XLA's, PyTorch's), idle, took a third of the second core (1.46x against
    1.8x alone). Timed in turn CORE_ROUNDS times; prints the fastest round's time on one core and
    on all: a neighbour on this shared machine takes the second core now and then (single rounds
    of 0.95x and 1.2x among rounds of 1.8x), and only ever slows a round down."""
    mlp = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad"))
    rng = np.random.default_rng(SEED)
    inputs = {"x": rng.standard_normal((256, 64)), "label": rng.integers(0, 10, 256)}
    ones, everys = [], []
    for _ in range(CORE_ROUNDS):
        os.sched_setaffinity(0, cores[:1])
        ones.append(timed(lambda: mlp.grad(**inputs, threads=1), budget / CORE_ROUNDS))
        os.sched_setaffinity(0, cores)
        everys.append(timed(lambda: mlp.grad(**inputs, threads=len(cores)), budget / CORE_ROUNDS))
    print(min(ones), min(everys))


COMPILE_CHILD = """
import sys, time
import spadc, spadc.api  # (spadc loads its names lazily: the import is done here, not timed)
start = time.perf_counter()
model = spadc.compile_file(sys.argv[1], cache=sys.argv[2] == "cache")
model._variant(None)  # the exact gradient kernel, which its first `grad` would compile (or load)
print(time.perf_counter() - start)
"""


def compile_rows(jax_first_calls: dict) -> list[str]:
    """Every example compiled in fresh processes, median of COMPILES: cold (the kernel cache off), at
    O3 and at the quick tier that a first call gets by default (spadc/backend/tiers.py), and warm
    (the cache filled)."""
    lines = ["| example | cold compile, O3 (s) | cold, quick tier (s) | warm compile (s) | JAX first call (s) |",
             "|---|---:|---:|---:|---:|"]
    examples = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".spad"))
    with tempfile.TemporaryDirectory() as folder:
        def child(path, mode, policy="optimised"):
            result = subprocess.run([sys.executable, "-c", COMPILE_CHILD, path, mode], capture_output=True, text=True,
                                    env={**os.environ, "SPADC_CACHE_DIR": folder, "SPADC_JIT": policy}, check=True)
            return float(result.stdout.strip())

        for name in examples:
            path = os.path.join(ROOT, "examples", name)
            cold = float(np.median([child(path, "no-cache") for _ in range(COMPILES)]))
            quick = float(np.median([child(path, "no-cache", "tiered") for _ in range(COMPILES)]))
            child(path, "cache")  # fills the cache
            warm = float(np.median([child(path, "cache") for _ in range(COMPILES)]))
            first = jax_first_calls.get(name)
            lines.append(f"| {name} | {cold:.2f} | {quick:.2f} | {warm:.3f} | {f'{first:.2f}' if first else '–'} |")
    return lines


def jax_first_calls() -> dict:
    """JAX's first call (trace and compile) of the models it has, per example they stand for."""
    rng = np.random.default_rng(SEED)
    calls = {}
    mlp = spadc.compile_file(os.path.join(ROOT, "examples", "mlp_digits.spad"))
    irnn = spadc.compile_file(os.path.join(ROOT, "examples", "irnn.spad"))
    for name, case, model, inputs in (
            ("mlp_digits.spad", "mlp", mlp, {"x": rng.standard_normal((32, 64)), "label": rng.integers(0, 10, 32)}),
            ("irnn.spad", "irnn", irnn, {"seq": rng.uniform(0, 1, (16, 28, 28)), "label": rng.integers(0, 10, 16)})):
        made = peers.jax_case(case, dict(model.params), inputs)
        if made:
            calls[name] = made[2]
    return calls


def print_rows_on_one_core(rows, budget: float) -> int:
    """A benchmark's `main`: pinned to the first core, the machine named, then `rows(budget)`."""
    os.sched_setaffinity(0, ALL_CORES[:1])
    print(f"Machine: {machine()}\n")
    print("\n".join(rows(budget)))
    return 0


def machine(setting: str = "every system pinned to one, except the all-cores row") -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = f"{os.cpu_count()} cores" if len(ALL_CORES) == os.cpu_count() else \
        f"{os.cpu_count()} cores, {len(ALL_CORES)} of them this process's (taskset)"
    return (f"{cpu} ({_vector_unit()}), {cores} ({setting}), Python {platform.python_version()}, "
            f"NumPy {np.__version__}, {platform.system()} {platform.machine()}")


def _vector_unit() -> str:
    """LLVM's name for the host core and its widest vectors: "AMD EPYC" has named cores with and
    without AVX-512 on this machine's host, and spadc's register tiles differ between them."""
    import llvmlite.binding as llvm
    llvm.initialize_native_target()
    features = llvm.get_host_cpu_features()
    widest = "AVX-512" if features.get("avx512f") else "AVX2" if features.get("avx2") else "no AVX2"
    return f"{llvm.get_host_cpu_name()}, {widest}"


def peer_table(rows: list[dict]) -> str:
    lines = ["| case | system | forward (µs) | gradient (µs) | gradient / forward | gradient time, spadc / this |",
             "|---|---|---:|---:|---:|---:|"]
    spadc_gradient = {}
    for row in rows:
        if row["system"] == "spadc":
            spadc_gradient[row["case"]] = row["gradient"]
        relative = "1" if row["system"] == "spadc" else f"{spadc_gradient[row['case']] / row['gradient']:.2f}"
        lines.append(f"| {row['case']} | {row['system']} | {row['forward'] * 1e6:.1f} | {row['gradient'] * 1e6:.1f} | "
                     f"{row['gradient'] / row['forward']:.1f} | {relative} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results.md"))
    parser.add_argument("--quick", action="store_true", help="a shorter time budget per measurement")
    parser.add_argument("--cores-child", nargs=2, metavar=("BUDGET", "CORES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cores_child is not None:  # (the parent is pinned to one core: it says which cores there are)
        cores_child(float(args.cores_child[0]), [int(c) for c in args.cores_child[1].split(",")])
        return 0
    os.sched_setaffinity(0, ALL_CORES[:1])
    budget = 0.2 if args.quick else 1.0
    cores = cores_figures(budget)
    first_calls = jax_first_calls()
    text = "\n\n".join([
        f"Machine: {machine()}",
        f"Times per call from Python, float64: the systems of a case timed in turn {ROUNDS} times, each time the "
        "median of 7 repeats; the fastest of those rounds reported (the machine is shared: a neighbour's load "
        "only ever slows a round down).",
        peer_table(peer_rows(budget)),
        "spadc's estimators and cores:",
        "\n".join(spadc_rows(budget, *cores)),
        "A model written per data point against the same model over the whole data set (`bench/hoisting.py`: "
        "what depends on params alone is computed once per call):",
        "\n".join(hoisting.rows(budget)),
        "Hand-written objectives, one sample per observation or point (`bench/bundle_adjustment.py`, "
        "`bench/gmm.py`: each checked against JAX and a central difference first):",
        "\n".join(bundle_adjustment.rows(budget)),
        "\n".join(gmm.rows(budget)),
        f"Compile times, each in a fresh process, median of {COMPILES} (imports excluded): `compile_file`, spadc's "
        "whole pipeline to the gradient kernel's machine code (the forward kernel is compiled when first used), "
        "with the kernel cache off (cold; the parser's tables, built once per spadc version, are loaded), at O3 "
        "and at the quick tier that a first call gets by default (`spadc/backend/tiers.py`), and with the cache "
        "filled (warm); JAX's first call of `jit(value_and_grad)` on the same model (tracing and XLA "
        "compilation), in this process after JAX's backend is up.",
        "\n".join(compile_rows(first_calls)),
    ]) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(f"# Benchmark results\n\nProduced by `python bench/run.py`.\n\n{text}")
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
