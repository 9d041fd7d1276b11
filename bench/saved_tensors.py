"""What PyTorch's autograd keeps for the backward pass of the same MLP and IRNN as spadc's examples.

    python -m bench.saved_tensors        (needs the optional `peers` extra: PyTorch)

Measured, not modelled: `torch.autograd.graph.saved_tensors_hooks` sees every tensor the forward
pass saves for backward; the bytes counted are those of the distinct storages saved that are not a
parameter's or an input's (those are not copies: spadc does not count them either), divided by the
batch. The models are written out to match examples/mlp_digits.spad and examples/irnn.spad op for
op in float64.
"""

from __future__ import annotations

import numpy as np

BATCH = 32


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def available() -> bool:
    return _torch() is not None


def _saved_bytes(torch, run, excluded) -> int:
    """Bytes of distinct storages that `run()` saves for backward, other than `excluded` tensors'."""
    skip = {t.untyped_storage().data_ptr() for t in excluded}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run()
    loss.backward()
    return sum(seen.values())


def mlp_saved_per_sample(batch: int = BATCH) -> float:
    """The 64-256-256-10 ReLU classifier with cross-entropy (mlp_digits.spad, dropout off)."""
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    sizes = [(256, 64), (256, 256), (10, 256)]
    weights = [torch.randn(o, i, dtype=torch.float64, generator=generator).mul_(0.1).requires_grad_() for o, i in sizes]
    biases = [torch.zeros(o, dtype=torch.float64, requires_grad=True) for o, _ in sizes]
    x = torch.randn(batch, 64, dtype=torch.float64, generator=generator)
    label = torch.randint(0, 10, (batch,), generator=generator)

    def run():
        h = x
        for k, (w, b) in enumerate(zip(weights, biases)):
            h = h @ w.T + b
            if k < 2:
                h = torch.relu(h)
        return torch.nn.functional.cross_entropy(h, label)

    return _saved_bytes(torch, run, [*weights, *biases, x]) / batch


def irnn_saved_per_sample(batch: int = BATCH, steps: int = 28) -> float:
    """h <- relu(Wx seq[t] + Wh h + b) over `steps` rows of 28, logits = Wo h (irnn.spad)."""
    torch = _torch()
    generator = torch.Generator().manual_seed(0)
    wx = torch.randn(64, 28, dtype=torch.float64, generator=generator).mul_(0.01).requires_grad_()
    wh = torch.eye(64, dtype=torch.float64).requires_grad_()
    b = torch.zeros(64, dtype=torch.float64, requires_grad=True)
    wo = torch.randn(10, 64, dtype=torch.float64, generator=generator).mul_(0.01).requires_grad_()
    seq = torch.randn(batch, steps, 28, dtype=torch.float64, generator=generator)
    label = torch.randint(0, 10, (batch,), generator=generator)

    def run():
        h = torch.zeros(batch, 64, dtype=torch.float64)
        for t in range(steps):
            h = torch.relu(seq[:, t] @ wx.T + h @ wh.T + b)
        return torch.nn.functional.cross_entropy(h @ wo.T, label)

    return _saved_bytes(torch, run, [wx, wh, b, wo, seq]) / batch


def table() -> str:
    """Markdown rows: PyTorch's saved bytes per sample beside spadc's exact and RAD tapes."""
    import os

    import spadc

    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    rows = ["| model | PyTorch saved tensors | spadc exact tape | spadc RAD 0.1 tape |", "|---|---:|---:|---:|"]
    for name, measure, inputs in (
            ("mlp_digits.spad", mlp_saved_per_sample, {"x": np.zeros((BATCH, 64)), "label": np.zeros(BATCH, int)}),
            ("irnn.spad", irnn_saved_per_sample, {"seq": np.zeros((BATCH, 28, 28)), "label": np.zeros(BATCH, int)})):
        model = spadc.compile_file(os.path.join(examples, name))
        exact = model.grad(stats=True, **inputs)[2]["tape_bytes"]
        rad = model.grad(estimator=spadc.RAD(keep=0.1), stats=True, **inputs)[2]["tape_bytes"]
        rows.append(f"| {name} | {measure():,.0f} B | {exact:,.0f} B | {rad:,.0f} B |")
    return "\n".join(rows)


if __name__ == "__main__":
    import bench
    bench.time_optimised_code()
    print(table() if available() else "PyTorch is not installed (pip install -e '.[peers]')")
