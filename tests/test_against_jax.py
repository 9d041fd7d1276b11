"""`vjp`, `input_grad` and `jacobian` on every example against JAX's derivatives of the same program
(tests/jax_reference.py: the IR evaluated by JAX, none of spadc's adjoint or tangent rules). The
values are compared too, so that the oracle's forward semantics are checked against the compiled
code's. Skipped without JAX (the optional extra `pip install .[jax]`; CI installs it)."""

import os

import numpy as np
import pytest

import spadc

from conftest import EXAMPLES as EXAMPLES_DIRECTORY, LONG, example, example_inputs, skew_vjp

jax = pytest.importorskip("jax", reason="the oracle is JAX (optional extra: pip install .[jax])")
jax.config.update("jax_enable_x64", True)
import jax_reference  # noqa: E402

SEED = 23
BATCH = 2
RTOL = 1e-10  # relative to the largest entry compared: two exact derivatives, rounding apart
# Quick profile: dense layers, convolution and pooling, a loop with a cond, a model with state (the
# long one: every example).
QUICK = ("mlp.spad", "cnn_digits.spad", "newton_cubic.spad", "lr_schedule.spad")


def _examples():
    names = sorted(f for f in os.listdir(EXAMPLES_DIRECTORY) if f.endswith(".spad"))
    return names if LONG else [name for name in names if name in QUICK]


@pytest.mark.parametrize("name", _examples())
def test_vjp_input_grad_and_jacobians_equal_jaxs(name):
    _check(name)


def test_every_primitive_has_a_jax_rule_or_a_reason():
    from spadc.ir.primitives import PRIMITIVES
    assert set(jax_reference.RULES).isdisjoint(jax_reference.WITHOUT_JAX_RULE)
    assert set(PRIMITIVES) == set(jax_reference.RULES) | set(jax_reference.WITHOUT_JAX_RULE)


@pytest.mark.parametrize("parts", [("params",), ("inputs",)])
def test_the_check_rejects_a_vjp_off_by_a_little(monkeypatch, parts):
    skew_vjp(monkeypatch, 1e-8, parts)
    with pytest.raises(AssertionError, match=r"off by \d\.\d\de-0[89] "):
        _check("mlp.spad")


def _check(name):
    program = spadc.frontend.lower(spadc.frontend.check_file(example(name)))
    model = spadc.compile_file(example(name))
    model.init_params(seed=SEED)
    rng = np.random.default_rng(SEED)
    jax_reference.check_derivatives(model, program, example_inputs(model.layout, rng, BATCH), rng, RTOL, name)
