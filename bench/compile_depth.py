"""Compile time against depth (issue 23): a 64-wide MLP written out layer by layer, L layers.

    python -m bench.compile_depth [--depths 2,8,32,64,100] [--profile]

Each figure is the CPU time of a fresh process (the kernel cache off) that compiles the model and
takes its first gradient (which compiles the gradient kernel), median of REPEATS; beside it, JAX's
first call of `jit(value_and_grad)` on the same network (trace and XLA compile), also in a fresh
process. With `--profile`, the share of LLVM's passes and of its code generation in spadc's time
for the deepest model. What grows faster than the program is what to fix: a flat seconds-per-layer
column is the goal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

REPEATS = 3
WIDTH = 64
BATCH = 32

SPADC_CHILD = """
import sys, time
import numpy as np
start = time.process_time()
import spadc
from bench.compile_depth import network
model = spadc.compile_source(network(int(sys.argv[1])), name="deep.spad", cache=False)
model.grad(x=np.zeros((int(sys.argv[2]), int(sys.argv[3]))), label=np.zeros(int(sys.argv[2]), dtype=np.int64))
print(time.process_time() - start)
"""

JAX_CHILD = """
import sys, time
import numpy as np
start = time.process_time()
import jax
import jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
depth, batch, width = (int(a) for a in sys.argv[1:4])
rng = np.random.default_rng(0)
params = [(rng.standard_normal((width, width)) / 8, np.zeros(width)) for _ in range(depth)]
def loss(params, x, label):
    h = x
    for W, b in params:
        h = jax.nn.relu(h @ W.T + b)
    return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(len(label)), label])
step = jax.jit(jax.value_and_grad(loss))
jax.block_until_ready(step(params, np.zeros((batch, width)), np.zeros(batch, dtype=np.int64)))
print(time.process_time() - start)
"""


def network(depth: int, width: int = WIDTH) -> str:
    """The .spad source: `depth` dense ReLU layers of `width`, then cross-entropy."""
    lines = [f"input x: f64[{width}]", "input label: i64"]
    for layer in range(depth):
        lines += [f"param W{layer}: f64[{width}, {width}] ~ glorot()", f"param b{layer}: f64[{width}]"]
    lines.append("let h0 = x")
    lines += [f"let h{layer + 1} = relu(W{layer} @ h{layer} + b{layer})" for layer in range(depth)]
    lines.append(f"loss cross_entropy(h{depth}, label)")
    return "\n".join(lines) + "\n"


def _child(code: str, depth: int, environment: dict) -> float:
    result = subprocess.run([sys.executable, "-c", code, str(depth), str(BATCH), str(WIDTH)], capture_output=True,
                            text=True, env=environment, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return float(result.stdout.strip().splitlines()[-1])


def _has_jax() -> bool:
    import importlib.util
    return importlib.util.find_spec("jax") is not None


def table(depths: list[int]) -> list[str]:
    lines = ["| layers | spadc compile (s) | per layer (ms) | JAX first call (s) |", "|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as folder:
        environment = {**os.environ, "SPADC_CACHE_DIR": folder}  # the parser's tables; kernels are not cached
        for depth in depths:
            ours = float(np.median([_child(SPADC_CHILD, depth, environment) for _ in range(REPEATS)]))
            theirs = float(np.median([_child(JAX_CHILD, depth, environment) for _ in range(REPEATS)])) \
                if _has_jax() else None
            lines.append(f"| {depth} | {ours:.2f} | {1000 * ours / depth:.0f} | "
                         f"{f'{theirs:.2f}' if theirs is not None else '–'} |")
    return lines


def profile(depth: int) -> list[str]:
    """Where the deepest model's compile goes: LLVM's passes by name, its code generation, the rest."""
    import time

    import llvmlite.binding as llvm

    from spadc.backend import jit

    captured = []
    original = jit.compile_ir
    jit.compile_ir = lambda ir, functions, level=3: captured.append(ir) or original(ir, functions, level)
    import spadc
    model = spadc.compile_source(network(depth), name="deep.spad", cache=False)
    model.grad(x=np.zeros((BATCH, WIDTH)), label=np.zeros(BATCH, dtype=np.int64))
    jit.compile_ir = original
    lines = []
    for ir in captured:
        machine = jit.native_target()
        module = llvm.parse_assembly(ir)
        module.triple, module.data_layout = machine.triple, str(machine.target_data)
        with jit.pipeline(machine) as (builder, manager):  # the JIT's own pipeline, with its timers on
            builder.start_pass_timing()
            start = time.process_time()
            manager.run(module, builder)
            passes = time.process_time() - start
            report = builder.finish_pass_timing()
        start = time.process_time()
        machine.emit_object(module)
        codegen = time.process_time() - start
        lines.append(f"- a kernel of {len(ir) // 1024} KB of IR: passes {passes:.2f} s, code generation {codegen:.2f} s")
        timed = dict.fromkeys(line.strip() for line in report.splitlines() if "%" in line)  # (LLVM prints it twice)
        lines += ["    " + line for line in timed][:8]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,8,32,64,100,300")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    print("\n".join(table(depths)))
    if args.profile:
        print("\n".join(profile(max(depths))))
    return 0


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    sys.exit(main())
