"""The benchmark's models written for each peer: NumPy (a hand-written gradient), JAX and PyTorch.

Each `make_*` returns, for one case, a function computing (loss, {param: gradient}) and one
computing the loss alone, with every array already converted to the peer's type: what a timing
measures is the call, not the conversion. JAX and PyTorch are optional (`None` when absent).
All in float64, the models op for op those of examples/ (Rosenbrock, mlp_digits, irnn).
"""

from __future__ import annotations

import numpy as np


# ---- NumPy, gradients by hand ----------------------------------------------------------------------

def numpy_rosenbrock(params):
    x = params["x"]

    def loss():
        return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))

    def grad():
        a = x[1:] - x[:-1] ** 2
        g = np.zeros_like(x)
        g[:-1] = -400 * x[:-1] * a - 2 * (1 - x[:-1])
        g[1:] += 200 * a
        return loss(), {"x": g}

    return grad, loss


def numpy_mlp(params, inputs):
    p, x, y = params, inputs["x"], inputs["label"]

    def forward():
        h1 = np.maximum(x @ p["W1"].T + p["b1"], 0)
        h2 = np.maximum(h1 @ p["W2"].T + p["b2"], 0)
        z = h2 @ p["W3"].T + p["b3"]
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean()), (h1, h2, logp)

    def grad():
        loss, (h1, h2, logp) = forward()
        n = len(y)
        g = np.exp(logp)
        g[np.arange(n), y] -= 1
        g /= n
        d2 = (g @ p["W3"]) * (h2 > 0)
        d1 = (d2 @ p["W2"]) * (h1 > 0)
        return loss, {"W1": d1.T @ x, "b1": d1.sum(0), "W2": d2.T @ h1, "b2": d2.sum(0), "W3": g.T @ h2,
                      "b3": g.sum(0)}

    return grad, lambda: forward()[0]


# ---- JAX ------------------------------------------------------------------------------------------------

def _jax():
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def jax_version() -> str | None:
    jax = _jax()
    return jax.__version__ if jax else None


def jax_case(case: str, params, inputs):
    """(grad, loss, first-call seconds of the jitted gradient), or None without JAX."""
    import time
    jax = _jax()
    if jax is None:
        return None
    jnp = jax.numpy

    def rosenbrock(p):
        x = p["x"]
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    def mlp(p, x, y):
        h1 = jax.nn.relu(x @ p["W1"].T + p["b1"])
        h2 = jax.nn.relu(h1 @ p["W2"].T + p["b2"])
        z = h2 @ p["W3"].T + p["b3"]
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(y.shape[0]), y])

    def irnn(p, seq, y):
        def step(h, row):
            return jax.nn.relu(row @ p["Wx"].T + h @ p["Wh"].T + p["b"]), None
        h, _ = jax.lax.scan(step, jnp.zeros((seq.shape[0], p["Wh"].shape[0])), jnp.swapaxes(seq, 0, 1))
        z = h @ p["Wo"].T
        return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(y.shape[0]), y])

    def lstm(p, seq, target):  # examples/lstm.spad: gates from one product with [x; h]
        n = p["b"].shape[0] // 4

        def step(state, row):
            h, c = state
            z = jnp.concatenate([row, h], axis=1) @ p["W"].T + p["b"]
            i, f, g, o = (jax.nn.sigmoid(z[:, :n]), jax.nn.sigmoid(z[:, n:2 * n]), jnp.tanh(z[:, 2 * n:3 * n]),
                          jax.nn.sigmoid(z[:, 3 * n:]))
            c = f * c + i * g
            return (o * jnp.tanh(c), c), None
        zeros = jnp.zeros((seq.shape[0], n))
        (h, _), _ = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(seq, 0, 1))
        return jnp.mean((h @ p["w_out"] - target) ** 2)

    model = {"rosenbrock": rosenbrock, "mlp": mlp, "irnn": irnn, "lstm": lstm}[case]
    args = [{k: jnp.asarray(v) for k, v in params.items()}] + [jnp.asarray(v) for v in inputs.values()]
    value_and_grad = jax.jit(jax.value_and_grad(model))
    loss_only = jax.jit(model)
    start = time.perf_counter()
    jax.block_until_ready(value_and_grad(*args))
    first_call = time.perf_counter() - start

    def grad():
        value, grads = jax.block_until_ready(value_and_grad(*args))
        return float(value), grads

    return grad, (lambda: float(jax.block_until_ready(loss_only(*args)))), first_call


# ---- PyTorch ------------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch


def torch_version() -> str | None:
    torch = _torch()
    return torch.__version__ if torch else None


def torch_case(case: str, params, inputs):
    """(grad, loss) in eager mode, or None without PyTorch."""
    torch = _torch()
    if torch is None:
        return None
    F = torch.nn.functional
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    data = [torch.tensor(v) for v in inputs.values()]

    def model(p, *rest):
        if case == "rosenbrock":
            x = p["x"]
            return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        if case == "mlp":
            x, y = rest
            h1 = torch.relu(x @ p["W1"].T + p["b1"])
            h2 = torch.relu(h1 @ p["W2"].T + p["b2"])
            return F.cross_entropy(h2 @ p["W3"].T + p["b3"], y)
        if case == "lstm":
            seq, target = rest
            n = p["b"].shape[0] // 4
            h = c = torch.zeros(seq.shape[0], n, dtype=torch.float64)
            for t in range(seq.shape[1]):
                z = torch.cat([seq[:, t], h], dim=1) @ p["W"].T + p["b"]
                i, f, g, o = torch.sigmoid(z[:, :n]), torch.sigmoid(z[:, n:2 * n]), torch.tanh(z[:, 2 * n:3 * n]), \
                    torch.sigmoid(z[:, 3 * n:])
                c = f * c + i * g
                h = o * torch.tanh(c)
            return torch.mean((h @ p["w_out"] - target) ** 2)
        seq, y = rest
        h = torch.zeros(seq.shape[0], p["Wh"].shape[0], dtype=torch.float64)
        for t in range(seq.shape[1]):
            h = torch.relu(seq[:, t] @ p["Wx"].T + h @ p["Wh"].T + p["b"])
        return F.cross_entropy(h @ p["Wo"].T, y)

    def grad():
        for leaf in leaves.values():
            leaf.grad = None
        loss = model(leaves, *data)
        loss.backward()
        return float(loss.detach()), {k: v.grad for k, v in leaves.items()}

    def loss_only():
        with torch.no_grad():
            return float(model(leaves, *data))

    return grad, loss_only
