"""A .spad simulator inside a JAX program: the same task as examples/pendulum_torch.py (a small
network learns the push that brings the pendulum of examples/pendulum.spad to each target angle),
written in JAX, its gradient through the compiled simulator by `jax.grad` under `jax.jit`, and
its steps by optax's Adam.

    pip install ".[jax]" && python examples/pendulum_jax.py
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import spadc
import spadc.jax

jax.config.update("jax_enable_x64", True)
HERE = os.path.dirname(os.path.abspath(__file__))


def train(steps: int = 300, seed: int = 0) -> list[float]:
    """The batch's mean loss at each step."""
    model = spadc.compile_file(os.path.join(HERE, "pendulum.spad"))
    simulate = spadc.jax.function(model)
    physics = {k: jnp.asarray(v) for k, v in model.params.items()}  # the pendulum's own params, fixed
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    weights = {"W1": jax.random.normal(keys[0], (1, 16)) * 0.5, "b1": jnp.zeros(16),
               "W2": jax.random.normal(keys[1], (16, 1)) * 0.25, "b2": jnp.zeros(1)}
    targets = jnp.linspace(-1.0, 1.0, 32)

    def loss(w):
        push = (jnp.tanh(targets[:, None] @ w["W1"] + w["b1"]) @ w["W2"] + w["b2"])[:, 0]
        start = jnp.stack([jnp.zeros_like(push), push], axis=1)
        return simulate(physics, start=start, target=targets)[0].mean()

    optimiser = optax.adam(0.01)  # betas (0.9, 0.999), as examples/pendulum_torch.py's torch.optim.Adam
    state = optimiser.init(weights)

    @jax.jit
    def step(weights, state):
        value, grads = jax.value_and_grad(loss)(weights)
        updates, state = optimiser.update(grads, state)
        return value, optax.apply_updates(weights, updates), state

    losses = []
    for _ in range(steps):
        value, weights, state = step(weights, state)
        losses.append(float(value))
    return losses


if __name__ == "__main__":
    history = train()
    print(f"mean squared miss: {history[0]:.4f} at the first step, {history[-1]:.6f} at the last")
    sys.exit(0 if np.isfinite(history[-1]) else 1)
