"""Loop-carried values whose update does not depend on a param still carry the path of their
incoming value: the adjoint must follow it (central differences are the oracle).

The three hand patterns are the ones that once gave a silently wrong gradient; the generated family
mixes reads before and after writes, constant, input and param-dependent updates, and nesting.
"""

import numpy as np
import pytest

import spadc

from conftest import LONG
from gradcheck import SEED, check_finite_differences, interpreted_gradient

CONSTANT_UPDATE = """
param p: f64 = 0.5
let a = p
let b = 0.0
for t in 0..1 {
  b = b + a
  a = 2.0
}
loss b
"""

TEACHER_FORCING = """
const T = 5
param W: f64[3, 3] ~ normal(0, 0.5)
param s: f64[3] ~ normal(0, 1)
input seq: f64[T, 3]
let prev = tanh(s)
let total = 0.0
for t in 0..T {
  let h = tanh(W @ prev)
  total = total + sum((h - seq[t]) ^ 2)
  prev = seq[t]
}
loss total
"""

OVERWRITTEN_BY_INPUT = """
const T = 4
param W: f64[3, 3] ~ normal(0, 0.5)
input x: f64[3]
let h = W @ x
let total = 0.0
for t in 0..T {
  total = total + sum(tanh(W @ h))
  h = x
}
loss total
"""

NESTED = """
param p: f64[2] ~ normal(0, 1)
let a = p
let total = 0.0
for i in 0..3 {
  for j in 0..2 {
    total = total + sum(a * a) * 0.5
    a = fill(1.5, 2)
  }
  a = a * p
}
loss total
"""

HAND_CASES = {"constant_update": (CONSTANT_UPDATE, {}),
              "teacher_forcing": (TEACHER_FORCING, {"seq": np.linspace(-1, 1, 15).reshape(5, 3)}),
              "overwritten_by_input": (OVERWRITTEN_BY_INPUT, {"x": np.array([0.3, -0.7, 1.1])}),
              "nested": (NESTED, {})}

GENERATED_PROGRAMS = 40 if LONG else 12  # size of the generated family (the fuzzer makes loops too)
LOOP_VARIABLES = ("a", "b", "c")


def _check(text: str, inputs: dict):
    model = spadc.compile_source(text, name="loop.spad")
    model.init_params(seed=SEED)
    params = {k: v.copy() for k, v in model.params.items()}
    loss, grads = model.grad(**inputs)
    _, reference = interpreted_gradient(spadc.check_text(text, "loop.spad"), params, inputs)
    for key in grads:
        np.testing.assert_allclose(grads[key], reference[key], rtol=1e-10, atol=1e-13, err_msg=key)
    check_finite_differences(lambda p: model.loss(params=p, **inputs), params, grads, np.random.default_rng(SEED))


def test_the_reported_case_has_gradient_one():
    model = spadc.compile_source(CONSTANT_UPDATE, name="loop.spad")
    model.init_params(seed=0)
    assert model.grad()[1]["p"] == 1.0


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_hand_patterns_against_central_differences(name):
    _check(*HAND_CASES[name])


def _update(rng, target: str) -> str:
    """A new value for a carried variable: constant, input-derived, or depending on others."""
    other = rng.choice(LOOP_VARIABLES)
    return str(rng.choice([
        "fill(0.25, 2)",
        "x[t]",
        f"tanh({other} * w)",
        f"{target} * 0.5 + x[t]",
        f"sin({other}) + {target}",
        "w * x[t]",
    ]))


def generated_program(seed: int) -> str:
    """A loop (maybe nested) over carried 2-vectors, initialised from params, inputs or constants,
    each updated in a random order by a random rule, the loss summing reads made before updates."""
    rng = np.random.default_rng(seed)
    lines = ["const T = 3", "param w: f64[2] ~ normal(0, 1)", "param v: f64[2] ~ normal(0, 1)", "input x: f64[T, 2]"]
    for name in LOOP_VARIABLES:
        lines.append(f"let {name} = {rng.choice(['v * 1.0', 'w + v', 'x[0]', 'fill(0.5, 2)'])}")
    lines.append("let total = 0.0")
    nested = rng.random() < 0.4
    lines.append("for t in 0..T {")
    if nested:
        lines.append("  for s in 0..2 {")
    statements = []
    for name in LOOP_VARIABLES:
        statements.append(f"total = total + sum({name} * {rng.choice(LOOP_VARIABLES)})")
        statements.append(f"{name} = {_update(rng, name)}")
    for k in rng.permutation(len(statements)):
        lines.append("    " + statements[k])
    if nested:
        lines.append("  }")
        lines.append(f"  {rng.choice(LOOP_VARIABLES)} = x[t]")
    lines.append("}")
    lines.append("loss total + sum(a * b * c)")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(GENERATED_PROGRAMS))
def test_generated_loops_against_central_differences(seed):
    _check(generated_program(seed), {"x": np.linspace(-0.9, 0.8, 6).reshape(3, 2)})
