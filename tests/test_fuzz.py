"""The differential fuzzer in the suite (tests/fuzzing.py), and proof that it catches planted bugs.
The suite checks a few programs and mutants (more under `SPADC_LONG=1`); the fuzzer proper runs
alone: `python tests/fuzzing.py --programs 10000`."""

import os

import pytest

import fuzzing
from spadc.backend import scalar

LONG = os.environ.get("SPADC_LONG") == "1"
# Programs checked against every oracle (1002: a loop): a smoke test of the oracles, whose power the
# planted bugs below show; the fuzzer's thousands of programs run alone (see the docstring).
# 10000007 (of the family that writes convolutions, fuzzing.CONV_FAMILY): a conv and a max pool.
FAST_SEEDS = [*range(1000, 1040), *range(10_000_000, 10_000_020)] if LONG else (1002, 10_000_007)
MUTANT_SEEDS = range(5000, 5000 + (1000 if LONG else 30))  # mutants that must give located errors
PLANTED_BUG_SEEDS = range(0, 30)  # among which a wrong compiled tanh must show


@pytest.mark.parametrize("seed", FAST_SEEDS)
def test_generated_programs_agree_with_every_oracle(seed):
    fuzzing.check_program(seed)


@pytest.mark.parametrize("seed", FAST_SEEDS[::3] if LONG else FAST_SEEDS)  # (three builds each: a third)
def test_generated_programs_derivatives_equal_jaxs(seed, tmp_path):
    jax = pytest.importorskip("jax", reason="the oracle is JAX (optional extra: pip install .[jax])")
    jax.config.update("jax_enable_x64", True)
    # (The quick profile: the default build; the long one: f32 and AOT builds too.)
    if not fuzzing.check_against_jax(seed, str(tmp_path) if LONG else None, f32=LONG):
        pytest.skip(f"program {seed} is not smooth, or its loss not finite: a kink's derivative is a convention")


def test_mutants_give_results_or_located_errors():
    for seed in MUTANT_SEEDS:
        try:
            fuzzing.check_mutant(seed)
        except Exception as error:
            raise AssertionError(f"mutant seed {seed}: {type(error).__name__}: {error}") from error


@pytest.mark.private_cache  # its wrong tanh must reach no other test
def test_the_fuzzer_catches_a_wrong_compiled_primitive(monkeypatch):
    """A negative control: compiled tanh made 1e-6 too large must fail some generated program."""
    original = scalar.SCALAR["tanh"]
    monkeypatch.setitem(scalar.SCALAR, "tanh", lambda e, op, x: e.b.fmul(original(e, op, x),
                                                                         scalar.fconst(e, 1 + 1e-6)))
    import spadc.api
    spadc.api._CACHE.clear()
    caught = None
    for seed in PLANTED_BUG_SEEDS:
        try:
            fuzzing.check_program(seed)
        except fuzzing.Mismatch:
            caught = seed
            break
    spadc.api._CACHE.clear()
    assert caught is not None


@pytest.mark.private_cache  # its wrong kernels must reach no other test
def test_the_lanes_check_catches_runs_that_lose_their_lanes(monkeypatch):
    """A negative control for `_check_lanes`: runs called with every storage shared by the lanes
    (stride 0, as if a run's function lost its lanes) fail generated program 900003."""
    import spadc
    from llvmlite import ir

    from spadc.backend import codegen
    real = codegen.FunctionEmitter.lane_layout

    def shared_by_all(self, value):
        pointer, _ = real(self, value)
        return pointer, ir.Constant(ir.IntType(64), 0)

    monkeypatch.setattr(codegen.FunctionEmitter, "lane_layout", shared_by_all)
    generator, text, model = fuzzing.compiled_program(900003)
    with pytest.raises((fuzzing.Mismatch, spadc.SpadcError)):
        fuzzing._check_lanes(text, model, generator, 900003)


def test_the_direction_check_rejects_a_gradient_off_by_1e_4():
    """The directional-derivative oracle tries finer steps where the loss curves fast (seed 7932: a
    chaotic loop, second derivative 1e8 along the direction); a gradient 1e-4 off still fails it."""
    seed = 7932
    generator, text, model = fuzzing.compiled_program(seed)
    params = {k: v.copy() for k, v in model.params.items()}
    inputs = fuzzing.inputs_for(seed, generator)
    _, grads = model.grad(**inputs, training=True, seed=seed, step=3)
    fuzzing._check_direction(model, inputs, params, grads, seed)  # the right gradient passes
    with pytest.raises(fuzzing.Mismatch):
        fuzzing._check_direction(model, inputs, params, {k: g * (1 + 1e-4) for k, g in grads.items()}, seed)
