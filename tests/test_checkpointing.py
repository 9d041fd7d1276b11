"""Loop checkpointing under a memory budget (ESTIMATORS.md section 9; spadc/passes/checkpoint.py,
spadc/backend/budget.py).

Oracles: the taped gradient of the same program, bit for bit (a plan moves bytes, never a result),
under exact, RAD, SPAD and dropout; the memory planner's workspace against the budget; the NumPy
interpreter on the cut program; a workspace full of garbage against a clean one.
"""

import os
import re
import warnings

import numpy as np
import pytest

import spadc
import spadrt
from spadc.ad.reverse import gradient
from spadc.backend import budget
from spadc.ir.interpret import RunOptions, evaluate
from spadc.ir.verify import verify
from spadc.passes.checkpoint import Binomial, cut
from spadrt.calls import Scratch
from spadrt.estimators import SamplingWarning

import fuzzing
from conftest import EXAMPLES, LONG, example, example_inputs, profile_examples, quick, run_cli
from test_memory import _garbage_workspace

SEED = 5
BATCH = 3
BUDGETS = 20  # budgets swept from the smallest that works to the taped workspace
REFUSED = 1000  # bytes: above any one tensor of the programs below, below any plan of them

REACTION = """
const N = 32
const T = 240
input u0: f64[N]
param rate: f64 = 0.5
param w: f64[N] = 0.1
let u = u0
for t in 0..T {
  u = [u[i] + 0.01 * (rate * u[i] * (1 - u[i]) + w[i] * u[(i + 1) % N]) for i in 0..N]
}
loss sum(u * u)
"""
# A recurrent net with dropout on its state, a nested loop and a branch in its body, and a `while`.
RECURRENT = """
const H = 8
const T = 36
input x: f64[H]
param W: f64[H, H] ~ normal(0, 0.4)
param b: f64[H]
let h = zeros(H)
let c = 0
for t in 0..T {
  h = tanh(W @ dropout(h, 0.25) + x * (0.1 * float(t)) + b)
  for s in 0..2 {
    h = if h[0] > 0 then h * 0.9 else h + 0.1 * b
  }
}
while c < 5 and h[1] < 3.0 max 8 {
  h = sigmoid(W @ h) + h
  c = c + 1
}
loss sum(h * h)
"""
PROGRAMS = {"reaction": REACTION, "recurrent": RECURRENT}


def _inputs(name, batch=BATCH):
    rng = np.random.default_rng(SEED)
    if name == "reaction":
        return {"u0": rng.uniform(0, 1, (batch, 32))}
    return {"x": rng.normal(0, 1, (batch, 8))}


EXACT, RAD, SPAD = None, spadc.RAD(keep=0.3, policy="edges"), spadc.SPAD(keep=0.3)


def _gradients(model, name, estimators=(EXACT, RAD, SPAD)):
    """The estimators' gradients on one batch, in training mode (the exact one with dropout)."""
    model.init_params(SEED)
    inputs = _inputs(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SamplingWarning)
        return [model.grad(**inputs, estimator=estimator, training=True, seed=SEED, step=2) for estimator in estimators]


def _assert_same_bits(got, want):
    for (loss, grads), (loss_want, grads_want) in zip(got, want):
        assert np.float64(loss).tobytes() == np.float64(loss_want).tobytes()
        for key in grads_want:
            assert grads[key].tobytes() == grads_want[key].tobytes(), key


# Snapshots per loop: three in the quick profile (the fuzzer and the examples' test check two); one
# (a replay from the start) and twelve (many short segments) in the long.
SNAPSHOTS = (1, 3, 12) if LONG else (3,)


# Quick: the recurrence (the stencil's checkpointed bits are compared with the taped ones below).
@pytest.mark.parametrize("name", quick(sorted(PROGRAMS), ("recurrent",)))
@pytest.mark.parametrize("checkpoint", SNAPSHOTS)
def test_checkpointed_gradients_equal_taped_ones_to_the_bit(name, checkpoint):
    # SPAD draws from the same keys as RAD, through distributions of its own: checked at two counts.
    estimators = (EXACT, RAD, SPAD) if checkpoint < 12 else (EXACT, RAD)
    taped = _gradients(spadc.compile_source(PROGRAMS[name], name=f"{name}.spad", checkpoint="none"), name, estimators)
    model = spadc.compile_source(PROGRAMS[name], name=f"{name}.spad", checkpoint=checkpoint)
    _, _, stats = model.grad(**_inputs(name), stats=True)
    assert stats["forward_replays"] == 1
    _assert_same_bits(_gradients(model, name, estimators), taped)


LOOP_EXAMPLES = [name for name in sorted(os.listdir(EXAMPLES)) if name.endswith(".spad")
                 and fuzzing.has_long_loop(spadc.frontend.lower(spadc.frontend.check_file(example(name))))]


@pytest.mark.parametrize("name", profile_examples(LOOP_EXAMPLES))
def test_every_example_with_a_loop_checkpoints_to_the_same_bits(name):
    """Two snapshots per long loop; SPAD (checked on the programs above) in the long profile."""
    estimators = (EXACT, RAD, SPAD) if LONG else (EXACT, RAD)
    results = []
    for checkpoint in ("none", 2):
        model = spadc.compile_file(example(name), checkpoint=checkpoint)
        model.init_params(SEED)
        inputs = example_inputs(model.layout, np.random.default_rng(SEED))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SamplingWarning)
            results.append([model.grad(**inputs, estimator=estimator, training=True, seed=SEED, step=2)
                            for estimator in estimators])
    assert model.grad(**inputs, stats=True)[2]["forward_replays"] >= 1
    _assert_same_bits(results[1], results[0])


# Quick: the stencil (the recurrence's plans are checked at three snapshots above).
@pytest.mark.parametrize("name", quick(sorted(PROGRAMS), ("reaction",)))
def test_every_budget_is_kept_and_more_budget_never_means_more_replays(name):
    taped = spadc.api.build(spadc.frontend.text_source(PROGRAMS[name], f"{name}.spad"), ".", lanes=1, checkpoint="none")
    taped_workspace = taped.emit(None)[0]["workspace"]
    want = _gradients(spadc.api.model_of(taped), name, (EXACT, RAD))  # (SPAD under plans: above)
    smallest = _smallest_budget(name, taped_workspace)
    budgets = np.unique(np.geomspace(smallest, taped_workspace, BUDGETS).astype(int))
    # Every budget planned as compiling plans it (the kernel emitted, not optimised): its workspace.
    program = spadc.frontend.lower(spadc.check_text(PROGRAMS[name], f"{name}.spad"))
    exact = budget.differentiated(program)
    plans = {int(limit): budget.plan_exact(program, exact, "f64", int(limit), 1, "auto")[2] for limit in budgets}
    assert all(plan.workspace <= limit for limit, plan in plans.items())
    replays = [plans[int(limit)].replays for limit in budgets]
    assert replays == sorted(replays, reverse=True), replays
    assert replays[0] >= 2 and replays[-1] == 0, replays
    # Three of them compiled and run: the kernel's own figures, and the taped gradient's bits.
    for limit in (budgets[0], budgets[len(budgets) // 2], budgets[-1]):
        model = spadc.compile_source(PROGRAMS[name], name=f"{name}.spad", max_memory=int(limit), lanes=1)
        _, _, stats = model.grad(**_inputs(name), threads=1, stats=True)
        assert stats["peak_workspace_bytes"] == plans[int(limit)].workspace <= limit
        assert stats["forward_replays"] == plans[int(limit)].replays
        # At the smallest budget only the exact adjoint fits: a sampled one has gates of its own.
        _assert_same_bits(_gradients(model, name, (EXACT, RAD) if limit != budgets[0] else (EXACT,)), want)


def _smallest_budget(name, taped_workspace):
    """The least workspace the planner finds, as its refusal names it; a budget of it must work."""
    with pytest.raises(spadc.SpadcError) as refusal:
        spadc.compile_source(PROGRAMS[name], name=f"{name}.spad", max_memory=REFUSED, lanes=1)
    message = str(refusal.value)
    assert f"{name}.spad:" in message and "would do" in message, message
    smallest = int(re.search(r"A budget of ([0-9,]+) bytes would do", message).group(1).replace(",", ""))
    assert REFUSED < smallest < taped_workspace
    return smallest


def test_none_refuses_what_auto_checkpoints():
    with pytest.raises(spadc.SpadcError, match="loop's tape"):
        spadc.compile_source(REACTION, name="r.spad", max_memory="40K", checkpoint="none", lanes=1)
    model = spadc.compile_source(REACTION, name="r.spad", max_memory="40K", lanes=1)
    assert model.grad(**_inputs("reaction"), threads=1, stats=True)[2]["peak_workspace_bytes"] <= 40 << 10


@pytest.mark.parametrize("bad", ["some", 0, -2, 1.5, True])
def test_a_bad_checkpoint_option_is_named(bad):
    with pytest.raises(spadc.SpadcError, match="checkpoint must be"):
        spadc.compile_source(REACTION, checkpoint=bad)


CUTS = [(2,), (4, 3), (2, 2, 3), (24,), Binomial(12, 2), Binomial(24, 3), Binomial(6, 1)]  # one; nested; binomial


@pytest.mark.parametrize("counts", quick(CUTS, [(2,), (2, 2, 3), Binomial(12, 2)]))
def test_the_interpreter_gives_the_cut_program_the_taped_gradient(counts):
    """The NumPy reference on the cut program's gradient, exact and under RAD: the same bits as uncut."""
    program = spadc.frontend.lower(spadc.check_text(REACTION.replace("const T = 240", "const T = 24"), "r.spad"))
    inputs = {"u0": _inputs("reaction", 1)["u0"][0]}
    params = {"rate": np.float64(0.5), "w": np.linspace(0, 0.2, 32)}
    options = RunOptions(training=True, seed=SEED, step=1, sample=0)
    for sampling in (None, spadc.RAD(keep=0.5).sampling):
        results = []
        for plan in ({}, {0: counts}):
            cut_program = cut(program, plan)
            verify(cut_program)
            result = evaluate(gradient(cut_program, sampling=sampling).program, params, inputs, options)
            results.append((result.loss, result.outputs["rate"].tobytes(), result.outputs["w"].tobytes()))
            assert result.outputs["rate"] != 0 and np.all(result.outputs["w"] != 0)  # (else a wrong state could pass)
        assert results[0] == results[1]


# Binomial schedules over segments: twelve of three steps in four snapshots (two replays: C(6, 4)
# = 15 >= 12); each of the 36 steps a segment, in five (three replays: C(8, 5) = 56 >= 36 > C(7, 5)).
BINOMIAL_PLANS = quick([Binomial(12, 4), Binomial(36, 5)], [Binomial(12, 4)])
# Bytes per lane count: below the recurrence's taped workspace (7,936 bytes with one lane), above
# its binomial plans' (with four lanes, each lane's values side by side: 21.4 KiB).
BINOMIAL_BUDGETS = {1: 5000, 4: 24000}


@pytest.mark.parametrize("plan", BINOMIAL_PLANS, ids=str)
@pytest.mark.parametrize("lanes", quick([1, 4], [4]))
def test_a_binomial_schedule_gives_the_taped_bits(plan, lanes, monkeypatch):
    """Exact (with dropout), RAD and SPAD, through a `while`, a nested loop and a branch; one lane,
    or four side by side (the actions' cond then runs once for all of them, and a param's gradient
    sums lane after lane, step by step, as the taped loop's does)."""
    # The same lanes both ways: a budget bounds the lanes, and lanes round sums otherwise.
    taped = _gradients(spadc.compile_source(RECURRENT, name="recurrent.spad", checkpoint="none", lanes=lanes),
                       "recurrent")
    monkeypatch.setattr(budget, "_candidates", lambda *plan_inputs: iter([{0: plan}]))
    limit = BINOMIAL_BUDGETS[lanes] - plan.segments  # (a budget of its own: a process keeps compiled models by options)
    model = spadc.compile_source(RECURRENT, name="recurrent.spad", max_memory=limit, lanes=lanes, cache=False)
    _, _, stats = model.grad(**_inputs("recurrent"), stats=True, threads=1)
    assert stats["forward_replays"] == plan.replays == {12: 2, 36: 3}[plan.segments]
    assert stats["peak_workspace_bytes"] <= limit
    _assert_same_bits(_gradients(model, "recurrent"), taped)


def test_a_poisoned_workspace_changes_no_checkpointed_result(monkeypatch):
    model = spadc.compile_source(RECURRENT, name="recurrent.spad", checkpoint=3)  # compiled above
    clean = _gradients(model, "recurrent")
    monkeypatch.setattr(Scratch, "workspace", _garbage_workspace)
    _assert_same_bits(_gradients(model, "recurrent"), clean)


# Generated programs with long top-level loops (tests/fuzzing.py checks every program it makes the
# same way, and its long profile makes thousands): odd seeds under binomial schedules, even ones cut
# once. 1200864, found by that profile: the checkpointed RAD variant ran one lane where the taped
# one ran 128, and rounded otherwise.
GENERATED = (314, 309) + ((1200864, 303, 321, 329, 331, 333) if LONG else ())


@pytest.mark.parametrize("seed", GENERATED)
def test_generated_loop_programs_checkpoint_to_the_same_bits(seed):
    generator = fuzzing.ProgramGenerator(seed)
    text = generator.program()
    inputs = fuzzing.inputs_for(seed, generator, BATCH)
    calls = [dict(training=True, step=1), dict(estimator=fuzzing.RAD_EDGES, step=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = spadc.compile_source(text, name=f"fuzz{seed}.spad", checkpoint="none")
        model.init_params(seed=seed)
        taped = [(options, model.grad(**inputs, seed=seed, **options)) for options in calls]
    assert fuzzing._check_checkpointed(text, seed, inputs, taped)
    # The control: the draws of another step are not the checkpointed gradient's.
    with pytest.raises(fuzzing.Mismatch):
        fuzzing._check_checkpointed(text, seed, inputs, [({**calls[1], "step": 2}, taped[1][1])])


def test_a_budget_is_planned_for_the_lanes_asked_for():
    """With `lanes` given, every lane holds a sample's tape: the plan is made for all of them (a
    budget between one lane's taped workspace and eight lanes' was refused)."""
    taped = spadc.compile_source(REACTION, name="reaction.spad", lanes=8, checkpoint="none")
    _, want, taped_stats = taped.grad(**_inputs("reaction"), stats=True, threads=1)
    limit = taped_stats["peak_workspace_bytes"] // 3
    model = spadc.compile_source(REACTION, name="reaction.spad", lanes=8, max_memory=limit)
    _, got, stats = model.grad(**_inputs("reaction"), stats=True, threads=1)
    assert model.layout["variants"]["exact"]["lanes"] == 8
    assert stats["forward_replays"] >= 1 and stats["peak_workspace_bytes"] <= limit
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)


def test_grad_takes_a_plan_of_its_own_per_call(tmp_path):
    """INTERFACE.md: `max_memory` and `checkpoint` on `grad` as on `compile_file`; the same bits."""
    model = spadc.compile_file(example("reaction_diffusion_long.spad"))
    model.init_params(SEED)
    rng = np.random.default_rng(SEED)
    inputs = {"u0": rng.uniform(0, 1, (2, 64)), "target": rng.uniform(0, 1, (2, 64))}
    loss, grads, taped = model.grad(**inputs, stats=True)
    assert taped["forward_replays"] == 0 and taped["peak_workspace_bytes"] > 1 << 20
    for _ in range(2):  # the second call reuses the first's kernels
        planned_loss, planned, stats = model.grad(**inputs, stats=True, threads=1, max_memory="1M")
        assert stats["forward_replays"] == 1 and stats["peak_workspace_bytes"] <= 1 << 20
        assert planned_loss == loss and all(planned[k].tobytes() == grads[k].tobytes() for k in grads)
    assert model.grad(**inputs, stats=True, checkpoint=4)[2]["forward_replays"] == 1
    with pytest.raises(spadc.SpadcError, match="loop's tape"):
        model.grad(**inputs, max_memory="1M", checkpoint="none")
    with pytest.raises(spadc.SpadcError, match="checkpoint must be"):
        model.grad(**inputs, checkpoint="often")
    assert model.grad(**inputs)[0] == loss  # the model's own plan is unchanged
    from spadc import aot
    aot.build(example("rosenbrock.spad"), str(tmp_path / "r.so"), estimators=("exact",))
    with pytest.raises(spadc.SpadcError, match="fixed when it was built ahead of time"):
        spadrt.load(str(tmp_path / "r.so")).grad(max_memory="1M")


def test_the_command_line_plans_to_max_memory(tmp_path):
    long_loop = example("reaction_diffusion_long.spad")
    out, inputs = tmp_path / "g.npz", tmp_path / "in.npz"
    rng = np.random.default_rng(SEED)
    np.savez(inputs, u0=rng.uniform(0, 1, 64), target=rng.uniform(0, 1, 64))
    taped = run_cli("grad", long_loop, "--inputs", inputs, "--out", out)
    assert taped.returncode == 0, taped.stderr
    want = dict(np.load(out))
    refused = run_cli("grad", long_loop, "--inputs", inputs, "--max-memory", "1M", "--checkpoint", "none")
    assert refused.returncode == 1 and "loop's tape (10,000 iterations)" in refused.stderr
    planned = run_cli("grad", long_loop, "--inputs", inputs, "--max-memory", "1M", "--checkpoint", "auto", "--out", out)
    assert planned.returncode == 0, planned.stderr
    assert all(np.load(out)[name].tobytes() == value.tobytes() for name, value in want.items())
    report = run_cli("mem", long_loop, "--max-memory", "1M", "--lanes", "1")
    assert "exact: peak workspace 105,472 B checkpointed, 5,123,072 B taped; forward work up to 2x" in report.stdout
    assert "loop at line 17 (10,000 steps): 100 snapshots, segments of 100 steps taped, 1 replay" in report.stdout
    bad = run_cli("grad", long_loop, "--inputs", inputs, "--checkpoint", "often")
    assert bad.returncode == 1 and "checkpoint must be" in bad.stderr
