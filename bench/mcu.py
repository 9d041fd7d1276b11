"""RAM and flash of training on the emulated Cortex-M4 (examples/mcu, issue 28), beside what PyTorch's
autograd saves for the same model and batch.

    python -m bench.mcu [--out docs/results/mcu.md]    (needs qemu-system-arm and arm-none-eabi-gcc;
                                                      the PyTorch column needs the `torch` extra)

Each row is a `make -C examples/mcu run` of one model and gradient: the program itself reports the
RAM it used (static data as linked plus the stack's painted high-water mark) and the flash of its
image; the loss and accuracy are its last epoch's. A gradient whose build cannot fit is shown with
what it needs, from the header of the build and the linker's refusal. PyTorch's column is measured
with saved_tensors_hooks (bench/saved_tensors.py): the bytes of activations it keeps for one
backward pass of the same batch in float32, parameters and inputs not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np


from bench import saved_tensors
from bench.run import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MCU = os.path.join(ROOT, "examples", "mcu")
DIGITS = {"TRAIN": os.path.join(ROOT, "examples", "data", "digits_train.npz"),
          "TEST": os.path.join(ROOT, "examples", "data", "digits_test.npz")}
SIMULATION = {"TRAIN": os.path.join(MCU, "data", "reaction_diffusion_train.npz"),
              "TEST": os.path.join(MCU, "data", "reaction_diffusion_test.npz"), "LR": "30", "BATCH": "4",
              "EPOCHS": "10", "MAX_MEMORY": "192K"}
# (model file, its settings, [(row label, the gradient's make variables)])
RUNS = [
    (os.path.join(MCU, "digits_mlp.spad"), dict(DIGITS, LR="0.1", BATCH="16", EPOCHS="10"),
     [("exact", {"ESTIMATOR": "exact"})] + [(f"RAD keep {k}", {"ESTIMATOR": "rad", "KEEP": k}) for k in
                                            ("0.1", "0.3", "0.5")]),
    (os.path.join(ROOT, "examples", "cnn_digits.spad"), dict(DIGITS, LR="0.05", BATCH="16", EPOCHS="5"),
     [("exact", {"ESTIMATOR": "exact"}), ("RAD keep 0.1", {"ESTIMATOR": "rad", "KEEP": "0.1"})]),
    (os.path.join(MCU, "reaction_diffusion_1000.spad"), SIMULATION,
     [("exact, taped", {"ESTIMATOR": "exact", "CHECKPOINT": "none", "MAX_MEMORY": "1M"}),
      ("exact, checkpointed to 192 KB", {"ESTIMATOR": "exact"}),
      ("RAD keep 0.1, checkpointed", {"ESTIMATOR": "rad", "KEEP": "0.1"})]),
]
EPOCH = re.compile(r"^epoch (\d+) loss \S+ \(0x([0-9a-f]{8})\) test loss \S+ \(0x([0-9a-f]{8})\)"
                   r"(?: test accuracy (\d+)/(\d+))?$", re.M)
RUN_SECONDS = 600  # a run that hangs (a QEMU that never exits) fails instead


def make(target: str, build: str, **variables) -> subprocess.CompletedProcess:
    settings = {"BUILD": build, "PYTHON": sys.executable, "SPADC": f"{sys.executable} -m spadc", **variables}
    return subprocess.run(["make", "-s", "-C", MCU, target, *(f"{k}={v}" for k, v in settings.items())],
                          capture_output=True, text=True, timeout=RUN_SECONDS)


def _float32(bits: str) -> float:
    return float(np.frombuffer(bytes.fromhex(bits)[::-1], dtype=np.float32)[0])


def report(output: str) -> dict:
    """The figures a run of train.c prints: its epochs (loss and test loss, read from their float32
    bits, and accuracy) and its memory (absent from a run on the host)."""
    def number(pattern):
        found = re.search(pattern, output, re.M)
        return int(found.group(1)) if found else None
    epochs = [{"loss": _float32(m[2]), "test_loss": _float32(m[3]),
               "accuracy": int(m[4]) / int(m[5]) if m[4] else None} for m in EPOCH.finditer(output)]
    return {"epochs": epochs, "ram": number(r"^ram (\d+) bytes used of 262144$"),
            "static": number(r"^  static data (\d+) bytes"),
            "stack": number(r"^  stack (\d+) bytes \(high-water mark\)"),
            "workspace": number(r"^    (\d+) workspace"), "flash": number(r"^flash (\d+) bytes")}


def _torch_saved(name: str, batch: int) -> int | None:
    """Bytes PyTorch saves for one backward pass of `name` on `batch` samples, float32."""
    torch = saved_tensors._torch()
    if torch is None:
        return None
    generator = torch.Generator().manual_seed(0)
    f = torch.nn.functional

    def parameter(*shape):
        return torch.randn(*shape, generator=generator).mul_(0.1).requires_grad_()
    if name == "reaction_diffusion_1000":
        n, steps, dt, kappa = 64, 1000, 0.001, 0.01
        source, rate = parameter(n), torch.ones((), requires_grad=True)
        u0, target = torch.rand(batch, n, generator=generator), torch.rand(batch, n, generator=generator)

        def run():
            u = u0
            for _ in range(steps):
                laplacian = (torch.roll(u, 1, 1) - 2 * u + torch.roll(u, -1, 1)) * n * n
                u = u + dt * (kappa * laplacian + rate * u * (1 - u) + source)
            return f.mse_loss(u, target)
        return saved_tensors._saved_bytes(torch, run, [source, rate, u0, target])
    x = torch.rand(batch, 64, generator=generator)
    label = torch.randint(0, 10, (batch,), generator=generator)
    if name == "digits_mlp":
        w1, b1, w2, b2 = parameter(32, 64), parameter(32), parameter(10, 32), parameter(10)
        params = [w1, b1, w2, b2]

        def run():
            return f.cross_entropy(f.linear(torch.relu(f.linear(x, w1, b1)), w2, b2), label)
    else:  # cnn_digits: two 3x3 convolutions (1 -> 8 -> 16), ReLU, 2x2 max pooling, a dense layer
        k1, c1, k2, c2 = parameter(8, 1, 3, 3), parameter(8), parameter(16, 8, 3, 3), parameter(16)
        w, b = parameter(10, 256), parameter(10)
        params = [k1, c1, k2, c2, w, b]

        def run():
            h1 = torch.relu(f.conv2d(x.view(batch, 1, 8, 8), k1, c1, padding=1))
            h2 = f.max_pool2d(torch.relu(f.conv2d(h1, k2, c2, padding=1)), 2)
            return f.cross_entropy(f.linear(h2.reshape(batch, -1), w, b), label)
    return saved_tensors._saved_bytes(torch, run, [*params, x])


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:,}"


def table() -> str:
    rows = ["| model | gradient | RAM used | of which workspace | stack | flash | last epoch's loss | test |"
            " PyTorch saved activations |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for path, settings, gradients in RUNS:
        name = os.path.splitext(os.path.basename(path))[0]
        saved = _torch_saved(name, int(settings["BATCH"]))
        for label, variables in gradients:
            with tempfile.TemporaryDirectory(prefix="spadc-mcu-") as build:
                result = make("run", build, MODEL=path, **{**settings, **variables})
                if result.returncode != 0:  # only a build whose static data leave no stack may fail
                    if "MIN_STACK" not in result.stderr:
                        sys.exit(f"bench.mcu: {name}, {label}:\n{result.stdout}{result.stderr}")
                    with open(os.path.join(build, "model.h")) as f:
                        needed = int(re.search(r"_WORKSPACE_GRAD_EXACT (\d+)", f.read()).group(1))
                    rows.append(f"| {name} | {label} | over 256 KB | {needed:,} | | | not run: the link refuses it "
                                f"| | {_cell(saved)} |")
                    continue
            figures = report(result.stdout)
            last = figures["epochs"][-1]
            test = f"{last['accuracy']:.1%}" if last["accuracy"] is not None else f"loss {last['test_loss']:.3g}"
            rows.append(f"| {name} | {label} | {figures['ram']:,} | {figures['workspace']:,} | {figures['stack']:,} "
                        f"| {figures['flash']:,} | {last['loss']:.4g} | {test} | {_cell(saved)} |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description="RAM and flash of training on the emulated Cortex-M4")
    parser.add_argument("--out", help="write the table as markdown to this file")
    options = parser.parse_args()
    text = "\n".join([
        "# Training on a microcontroller", "",
        "Written by `python -m bench.mcu --out docs/results/mcu.md` (examples/mcu under QEMU's MPS2-AN386, a "
        "Cortex-M4F with 256 KB of RAM and 1 MB of flash as its linker script cuts the board down; host: "
        f"{machine('one process')}). RAM used: static data as linked plus the stack's high-water mark, "
        "reported by the program; the workspace holds the tape and every temporary of one kernel call, "
        "one sample at a time. PyTorch's column: the activations its autograd saves for one backward pass "
        "of the same batch in float32 (16 digits; 4 simulations).", "",
        "Settings: digits_mlp 64-32-10, 10 epochs of SGD at lr 0.1, batches of 16; cnn_digits, 5 epochs at "
        "lr 0.05; reaction_diffusion_1000 (1000 Euler steps of 64 cells), 10 epochs at lr 30, batches of 4, "
        "gradients planned to a 192 KB budget. Seed 0 everywhere.", "", table(), "",
        "How to read it. A build for another target runs one sample at a time and sums the gradient, so "
        "its workspace is one sample's tape and temporaries whatever the batch; PyTorch keeps the whole "
        "batch's activations at once. On the digits MLP one sample's tape is smaller than the kernels' "
        "temporaries, so RAD's rows take the RAM of exact's: parameters and gradient dominate. The "
        "simulation's taped exact gradient needs more workspace than the board has: the link refuses it "
        "(its static data leave no stack). Planned to the budget, the same gradient replays segments of "
        "the loop from a few saved states: the same gradient, bit for bit, in a tenth of the RAM. RAD samples "
        "products with a parameter (the `weights` policy); the simulation's tape is its chain of "
        "states, which every gradient keeps, so its RAD row is exact's.", ""])
    print(text)
    if options.out:
        with open(options.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
