"""`vjp`, `input_grad` and `jacobian` on every example against JAX's derivatives of the same program
(tests/jax_reference.py: the IR evaluated by JAX, none of spadc's adjoint or tangent rules). The
values are compared too, so that the oracle's forward semantics are checked against the compiled
code's. Under the JIT to 1e-10, as an f32 build to its rounding, as an AOT library (`--entry
vjp,jacobian`) to 1e-10. Skipped without JAX (the optional extra `pip install .[jax]`; CI installs it)."""

import functools
import os

import numpy as np
import pytest

import spadc
import spadrt
from spadc import aot

from conftest import EXAMPLES as EXAMPLES_DIRECTORY, LONG, example, example_inputs, skew_vjp

jax = pytest.importorskip("jax", reason="the oracle is JAX (optional extra: pip install .[jax])")
jax.config.update("jax_enable_x64", True)
import jax_reference  # noqa: E402

SEED = 23
BATCH = 2
RTOL = 1e-10  # relative to the largest entry compared (or to 1): two exact derivatives, rounding apart
F32_RTOL = 1e-4  # an f32 build's, values and derivatives alike: its rounding over a model's depth
# Quick profile: dense layers, convolution and pooling, a loop with a cond, a model with state (the
# long one: every example).
QUICK = ("mlp.spad", "cnn_digits.spad", "newton_cubic.spad", "lr_schedule.spad")


def _cases():
    """(example, build): every example under the JIT, as an f32 build and as an AOT library (the
    quick profile: QUICK under the JIT, and the first of them in each other build)."""
    names = sorted(f for f in os.listdir(EXAMPLES_DIRECTORY) if f.endswith(".spad"))
    if not LONG:
        names = [name for name in names if name in QUICK]
        return [(name, "jit") for name in names] + [(QUICK[0], "f32"), (QUICK[0], "aot")]
    return [(name, build) for name in names for build in ("jit", "f32", "aot")]


@functools.lru_cache(maxsize=1)  # (the builds of one example share JAX's Jacobians: its cost)
def _oracle(name):
    program = spadc.frontend.lower(spadc.frontend.check_file(example(name)))
    model = spadc.compile_file(example(name))
    model.init_params(seed=SEED)
    inputs = example_inputs(model.layout, np.random.default_rng(SEED), BATCH)
    return program, model, inputs, jax_reference.jacobians(program, model, inputs)


def _build(name, build, directory):
    """The example's model as `build` makes it, at the JIT model's params."""
    _, jit, _, _ = _oracle(name)
    if build == "jit":
        return jit
    if build == "f32":
        model = spadc.compile_file(example(name), dtype="f32")
    else:
        library = os.path.join(directory, name.replace(".spad", ".so"))
        aot.build(example(name), library, entries=("vjp", "jacobian"))
        model = spadrt.load(library)
    model.set_params(jit.params)
    return model


def _check(name, build="jit", directory=None):
    program, _, inputs, oracle = _oracle(name)
    model = _build(name, build, directory)
    rtol = F32_RTOL if build == "f32" else RTOL
    jax_reference.check_derivatives(model, program, inputs, np.random.default_rng(SEED), rtol, f"{name} ({build})",
                                    value_rtol=F32_RTOL if build == "f32" else jax_reference.VALUE_RTOL, oracle=oracle)


@pytest.mark.parametrize("name, build", _cases())
def test_vjp_input_grad_and_jacobians_equal_jaxs(name, build, tmp_path):
    _check(name, build, str(tmp_path))


def test_every_primitive_has_a_jax_rule_or_a_reason():
    from spadc.ir.primitives import PRIMITIVES
    assert set(jax_reference.RULES).isdisjoint(jax_reference.WITHOUT_JAX_RULE)
    assert set(PRIMITIVES) == set(jax_reference.RULES) | set(jax_reference.WITHOUT_JAX_RULE)


@pytest.mark.parametrize("parts", [("params",), ("inputs",)])
def test_the_check_rejects_a_vjp_off_by_a_little(monkeypatch, parts):
    skew_vjp(monkeypatch, 1e-8, parts)
    with pytest.raises(AssertionError, match=r"off by \d\.\d\de-0[89] "):
        _check("mlp.spad")
