"""Write data/reaction_diffusion_{train,test}.npz for reaction_diffusion_1000.spad: initial states
u0 (random smooth profiles in [0.1, 0.9]) and the final states `target` that the model's own
forward kernel gives them under a hidden source profile and rate. Training on the device recovers
them: the loss falls towards zero. Deterministic (seed 0); run from this folder.

  python make_simulation_data.py
"""
import os

import numpy as np

import spadc

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTS = {"train": 32, "test": 8}
TRUE_RATE = 2.0
MODES = 3  # sinusoids in each initial profile


def main():
    model = spadc.compile_file(os.path.join(HERE, "reaction_diffusion_1000.spad"))
    n = model.params["source"].size
    cells = np.arange(n) / n
    model.set_params({"source": 0.3 * np.sin(2 * np.pi * cells) - 0.1 * np.cos(4 * np.pi * cells),
                      "rate": np.array(TRUE_RATE)})
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    for split, count in COUNTS.items():
        k = np.arange(1, MODES + 1)[None, :, None]
        phases = rng.uniform(0, 2 * np.pi, (count, MODES, 1))
        amplitudes = rng.uniform(0, 1, (count, MODES, 1)) / k
        profiles = np.sum(amplitudes * np.sin(2 * np.pi * k * cells + phases), axis=1)
        low, high = profiles.min(axis=1, keepdims=True), profiles.max(axis=1, keepdims=True)
        u0 = (0.1 + 0.8 * (profiles - low) / (high - low)).astype(np.float32).astype(np.float64)
        target = model.forward(u0=u0, target=np.zeros_like(u0)).outputs["final"]
        target = target.astype(np.float32).astype(np.float64)  # the device stores float32
        np.savez(os.path.join(HERE, "data", f"reaction_diffusion_{split}.npz"), u0=u0, target=target)


if __name__ == "__main__":
    main()
