"""The examples that put a .spad simulator inside PyTorch and JAX training loops
(examples/pendulum_torch.py, examples/pendulum_jax.py) run and learn: the batch's loss falls by a
factor of LEARNED within STEPS steps. Each skips without its framework (optional extras)."""

import importlib.util
import os

import numpy as np
import pytest

from conftest import EXAMPLES

STEPS = 80
LEARNED = 5.0  # first loss over last: 8 (PyTorch) and 13 (JAX) in 80 steps, 65 and 75 in 300


def _example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, frameworks, extra", [("pendulum_torch", ("torch",), "torch"),
                                                     ("pendulum_jax", ("jax", "optax"), "jax")])
def test_a_spad_simulator_trains_inside_the_framework(name, frameworks, extra):
    for framework in frameworks:
        pytest.importorskip(framework, reason=f"the example needs {framework} (optional extra: pip install .[{extra}])")
    losses = _example(name).train(steps=STEPS)
    assert np.all(np.isfinite(losses)) and losses[0] / losses[-1] > LEARNED, (losses[0], losses[-1])
