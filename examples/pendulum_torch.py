"""A .spad simulator as a PyTorch layer: a small network learns, for each target angle, the push
(initial angular velocity) that brings the pendulum of examples/pendulum.spad to it after two
seconds. Trained with torch.optim; the gradient flows through the compiled simulator to its input.

    pip install ".[torch]" && python examples/pendulum_torch.py
"""

import os
import sys

import numpy as np
import torch

import spadc
import spadc.torch

HERE = os.path.dirname(os.path.abspath(__file__))


def train(steps: int = 300, seed: int = 0) -> list[float]:
    """The batch's mean loss at each step."""
    torch.manual_seed(seed)
    simulator = spadc.torch.Module(spadc.compile_file(os.path.join(HERE, "pendulum.spad")))
    simulator.requires_grad_(False)  # the pendulum's own params stay as they are
    controller = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    optimizer = torch.optim.Adam(controller.parameters(), lr=0.01)
    targets = torch.linspace(-1.0, 1.0, 32, dtype=torch.float64)
    losses = []
    for _ in range(steps):
        push = controller(targets[:, None])[:, 0]
        start = torch.stack([torch.zeros_like(push), push], dim=1)
        loss = simulator(start=start, target=targets).loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    history = train()
    print(f"mean squared miss: {history[0]:.4f} at the first step, {history[-1]:.6f} at the last")
    sys.exit(0 if np.isfinite(history[-1]) else 1)
