"""Kernels that run several samples side by side (lanes) against one lane and the interpreter.

Oracles: the same model compiled with one lane (every sample's forward values are the same
arithmetic: bit for bit; gradient sums may add a param's contributions in another order: to
rounding), and, for small programs, the NumPy interpreter's per-sample gradients averaged. Batches of BATCH samples
fill whole blocks of lanes and part of one, and the runtime splits them into calls of
`calls.CHUNK` samples, two whole and one part.
"""

import os
import re
import sys

import numpy as np
import pytest

import spadc
from spadrt import calls
from spadc import frontend
from spadc.frontend import check_text
from spadc.ir.interpret import evaluate

from conftest import EXAMPLES, LONG, example, quick
from gradcheck import interpreted_gradient

sys.path.append(os.path.dirname(EXAMPLES))  # the checkout's bench/ (after the installed spadc)
from bench.compile_depth import network  # noqa: E402

SEED = 5
BATCH = 150  # calls of 128 and 22 samples; blocks of 16 lanes, the last of each call partly filled
LANES = 16
RTOL = 1e-11  # a gradient against one lane's, or the interpreter's

RNG = np.random.default_rng(SEED)
BATCHES = {
    "mlp.spad": {"x": RNG.standard_normal((BATCH, 64)), "label": RNG.integers(0, 10, BATCH)},
    "mlp_digits.spad": {"x": RNG.standard_normal((BATCH, 64)), "label": RNG.integers(0, 10, BATCH)},
    "irnn.spad": {"seq": RNG.uniform(0, 1, (BATCH, 28, 28)), "label": RNG.integers(0, 10, BATCH)},
    "reaction_diffusion.spad": {"u0": RNG.uniform(0, 1, (BATCH, 64)), "target": RNG.uniform(0, 1, (BATCH, 64))},
}

STACKED = ("input x: f64[8]\ninput label: i64\nparam W: f64[3, 8, 8] ~ normal(0, 0.4)\nparam b: f64[3, 8]\n"
           "let h = x\nfor l in 0..3 {\n  h = relu(W[l] @ h + b[l])\n}\nloss cross_entropy(h, label)")
# Matrices past gemm.PACK_MIN_ENTRIES, whose lane products pack what they read: W @ x and x @ W by
# panels of W's rows or columns (130: 11 panels of 12 on AVX2, the last moved back over the one
# before; 131 columns: k's last 3 apart), the weight gradients' sums by blocks of the lanes' columns
# (131: 64, 64 and 3; 130: 26) and tiles of their rows (130: tiles of 2), a stacked weight's slice
# included; one lane transposes W's rows instead.
WIDE = ("input x: f64[131]\ninput label: i64\nparam A: f64[130, 131] ~ normal(0, 0.08)\n"
        "param B: f64[2, 130, 130] ~ normal(0, 0.1)\nlet h = tanh(A @ x)\nfor l in 0..2 {\n  h = relu(h @ B[l])\n}\n"
        "loss cross_entropy(h, label)")
# A large matrix of few rows (a classifier's last layer): W @ x in single vectors and rows, x @ W
# over 1,700 columns (141 panels and one moved back), its sum in blocks of 100 columns by 2 rows.
NARROW = ("input x: f64[1700]\ninput label: i64\nparam C: f64[10, 1700] ~ normal(0, 0.03)\n"
          "param v: f64[1700] ~ normal(0, 1)\nloss cross_entropy(C @ tanh(x * v), label)")
# Scalars made and read within one run (registers of its function: outline.registers), one read
# after it, a cond's scalar result, and the loss (read by the kernel after the body)
SCALARS = ("input x: f64[4]\nparam W: f64[6, 4] ~ normal(0, 0.5)\nlet h = W @ x\nlet s = sum(h)\n"
           "let t = s * s + 1.0\nlet u = if t > 2.0 then log(t) else t - 1.0\nlet g = W @ (x * u)\n"
           "loss u * s + sum(g * h) / t")
PROGRAMS = {
    # a cond per sample inside a loop that runs in lockstep; views of an input row; a comprehension
    "cond_in_loop": ("input seq: f64[6, 4]\nparam w: f64[4, 4] ~ normal(0, 0.5)\nparam u: f64[4] ~ normal(0, 1)\n"
                     "let h = seq[0]\nfor t in 1..6 {\n  h = if h[0] > 0 then tanh(w @ h + seq[t]) else h * 0.5 - u\n}\n"
                     "let sq = [h[i] * h[(i + 1) % 4] for i in 0..4]\nloss sum(sq) + sum(u @ w)"),
    # a table lookup at a per-sample index, and a param used twice (two contributions per sample)
    "lookup": ("input token: i64\ninput v: f64[3]\nparam emb: f64[5, 3] ~ normal(0, 1)\nparam m: f64[3, 3] ~ normal(0, 1)\n"
               "let e = emb[token]\nlet h = m @ (e * v)\nloss sum(tanh(m @ h)) + e[1] * h[2]"),
    # layers of one shape: their products and their runs are functions shared by the layers
    "deep": network(5, width=8),
    # layers in a loop over stacked weights: W[l] is one pointer for all lanes (lane_ops.py)
    "stacked": STACKED,
    "wide": WIDE,
    "narrow": NARROW,
    # rows that end in part of a vector (gemm.ragged_panels): 10 columns are a vector and a half
    # vector, 13 three vectors of halving widths, 37 a full panel and the rest
    "scalars": SCALARS,
    "ragged": ("input x: f64[13]\ninput label: i64\nparam W1: f64[37, 13] ~ glorot()\n"
               "param W2: f64[10, 37] ~ glorot()\nparam W3: f64[7, 10] ~ glorot()\n"
               "loss cross_entropy(W3 @ tanh(W2 @ tanh(W1 @ x)), label)"),
}
# A run of ~40 ops between the product and the loss (a gradient of 170), cut into runs of at most
# RUN_OPS (memory.py; patched to 16 by the test), the last holding the loss's check of the label.
LONG_RUN = ("input x: f64[6]\ninput label: i64\nparam W: f64[6, 6] ~ normal(0, 0.5)\nlet h = W @ x\n"
            + "h = h * 0.9 + tanh(h) * 0.1\n" * 6 + "loss cross_entropy(h, label)")
PROGRAM_INPUTS = {
    "cond_in_loop": {"seq": RNG.standard_normal((BATCH, 6, 4))},
    "lookup": {"token": RNG.integers(0, 5, BATCH), "v": RNG.standard_normal((BATCH, 3))},
    "deep": {"x": RNG.standard_normal((BATCH, 8)), "label": RNG.integers(0, 8, BATCH)},
    "stacked": {"x": RNG.standard_normal((BATCH, 8)), "label": RNG.integers(0, 8, BATCH)},
    "wide": {"x": RNG.standard_normal((BATCH, 131)), "label": RNG.integers(0, 130, BATCH)},
    "narrow": {"x": RNG.standard_normal((BATCH, 1700)), "label": RNG.integers(0, 10, BATCH)},
    "ragged": {"x": RNG.standard_normal((BATCH, 13)), "label": RNG.integers(0, 7, BATCH)},
    "scalars": {"x": RNG.standard_normal((BATCH, 4))},
}


def _pair(build):
    """The model with LANES lanes and with one, the same params."""
    models = [build(LANES), build(1)]
    for model in models:
        model.init_params(seed=SEED)
    return models


def _check(models, program, inputs):
    lanes, one = models
    assert lanes.layout["variants"]["exact"]["lanes"] == LANES and one.layout["variants"]["exact"]["lanes"] == 1
    forward, reference = lanes.forward(**inputs), one.forward(**inputs)
    assert np.array_equal(forward.loss, reference.loss)
    for key in reference.outputs:
        assert np.array_equal(forward.outputs[key], reference.outputs[key]), key
    loss, grads = lanes.grad(**inputs, seed=3, training=True)
    one_loss, one_grads = one.grad(**inputs, seed=3, training=True)
    assert loss == pytest.approx(one_loss, rel=RTOL)
    for key in grads:
        np.testing.assert_allclose(grads[key], one_grads[key], rtol=RTOL, atol=1e-14, err_msg=key)
    if program is not None:  # the interpreter, sample by sample
        params = {k: v.copy() for k, v in lanes.params.items()}
        per_sample = [interpreted_gradient(program, params, {k: v[s] for k, v in inputs.items()})[1]
                      for s in range(BATCH)]
        for key in grads:
            mean = np.mean([g[key] for g in per_sample], axis=0)
            np.testing.assert_allclose(grads[key], mean, rtol=1e-9, atol=1e-12, err_msg=key)
        first = evaluate(program, params, {k: v[BATCH - 1] for k, v in inputs.items()})
        assert forward.loss[-1] == pytest.approx(first.loss, rel=1e-12)


@pytest.mark.parametrize("name", quick(sorted(BATCHES), ("mlp_digits.spad", "irnn.spad")))  # (products; a loop of them)
def test_examples_with_lanes(name):
    models = _pair(lambda lanes: spadc.compile_file(example(name), lanes=lanes))
    _check(models, None, BATCHES[name])  # (one lane against the interpreter: test_compiled.py)


QUICK_PROGRAMS = ("cond_in_loop", "lookup", "stacked", "wide", "narrow", "ragged", "scalars")  # ("deep": the examples)


@pytest.mark.parametrize("name", quick(sorted(PROGRAMS), QUICK_PROGRAMS))
def test_programs_with_lanes(name):
    models = _pair(lambda lanes: spadc.compile_source(PROGRAMS[name], name=f"{name}.spad", lanes=lanes))
    _check(models, check_text(PROGRAMS[name], name=f"{name}.spad"), PROGRAM_INPUTS[name])


ESTIMATORS = {"rad": lambda: spadc.RAD(keep=0.3), "rad-bernoulli": lambda: spadc.RAD(keep=0.3, draw="bernoulli"),
              "spad": lambda: spadc.SPAD(keep=0.3, refresh=2)}
# Shapes no register tile divides: 29 rows are a whole tile, a tile of fewer vectors and scalar
# rows; 11 and 29 columns end in a part of a vector (spadc/backend/gates.py, lane_outer_add).
ODD_SHAPES = ("input x: f64[11]\ninput label: i64\nparam W1: f64[29, 11] ~ glorot()\n"
              "param W2: f64[3, 29] ~ glorot()\nloss cross_entropy(W2 @ tanh(W1 @ x), label)")
SAMPLED_MODELS = {
    "mlp": (lambda lanes: spadc.compile_file(example("mlp.spad"), lanes=lanes), BATCHES["mlp.spad"]),
    "odd_shapes": (lambda lanes: spadc.compile_source(ODD_SHAPES, name="odd_shapes.spad", lanes=lanes),
                   {"x": RNG.standard_normal((BATCH, 11)), "label": RNG.integers(0, 3, BATCH)}),
}


# Quick: each estimator once, the odd shapes (which reach every tile's remainder) twice.
@pytest.mark.parametrize("name, model", quick([(e, m) for e in sorted(ESTIMATORS) for m in sorted(SAMPLED_MODELS)],
                                             [("rad", "mlp"), ("rad-bernoulli", "odd_shapes"), ("spad", "odd_shapes")]))
def test_sampled_gradients_with_lanes_are_one_lanes_to_rounding(name, model):
    # Gates draw by sample, whatever the lane: the same draws, so the same estimate up to the order
    # in which a block's kept columns are added (a wrong draw would be off by the gradient's size).
    build, inputs = SAMPLED_MODELS[model]
    lanes, one = _pair(build)
    ours, theirs = ESTIMATORS[name](), ESTIMATORS[name]()  # each its own step counter (SPAD: scoring steps too)
    for _ in range(3):
        mine, other = lanes.grad(**inputs, estimator=ours, seed=4)[1], one.grad(**inputs, estimator=theirs, seed=4)[1]
        for key in mine:
            np.testing.assert_allclose(mine[key], other[key], rtol=RTOL, atol=1e-14, err_msg=key)


def test_a_batch_over_several_calls_is_the_mean_of_its_samples():
    # The runtime weighs each call's mean by its share of the batch: against each sample on its own.
    assert calls.CHUNK < BATCH < 3 * calls.CHUNK and BATCH % calls.CHUNK
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(seed=SEED)
    inputs = BATCHES["mlp.spad"]
    loss, grads = model.grad(**inputs)
    alone = [model.grad(**{k: v[s] for k, v in inputs.items()}) for s in range(BATCH)]
    assert loss == pytest.approx(np.mean([a[0] for a in alone]), rel=1e-13)
    for key in grads:
        np.testing.assert_allclose(grads[key], np.mean([a[1][key] for a in alone], axis=0), rtol=1e-12,
                                   atol=1e-15, err_msg=key)


def test_lanes_keep_no_stack_array_that_grows_with_them():
    # A scalar has a workspace slot of one element per lane: the stack does not grow with lanes
    # (a kernel may run on a thread whose stack is small). Read in the IR as emitted: arrays are
    # `alloca T, i64 N` or `alloca [N x T]`.
    from test_aot import _SCALAR_BYTES, STACK_ARRAY_LIMIT
    emitted = spadc.api.build_file(example("mlp_digits.spad"), lanes=256).llvm_ir
    arrays = [int(m.group(2)) * _SCALAR_BYTES[m.group(1)] for m in re.finditer(r"= alloca (\w+), i64 (\d+)", emitted)]
    arrays += [int(m.group(1)) * _SCALAR_BYTES[m.group(2)] for m in re.finditer(r"= alloca \[(\d+) x (\w+)\]", emitted)]
    assert max(arrays, default=0) <= STACK_ARRAY_LIMIT


def test_a_runs_scalars_that_nothing_reads_after_it_are_registers():
    """outline.registers: SCALARS' forward runs, the first between its products, the second after:
    the scalars each makes and reads alone are its registers (s * s, t > 2.0; u * s, the sum, the
    quotient); s, t and u, which the second product or run reads, the vector x * u, and the loss,
    which the kernel reads after the body, are not."""
    from spadc.backend import memory, outline
    program = frontend.lower(check_text(SCALARS, "scalars.spad"))
    plan = memory.plan(program, 8, lanes=LANES)
    shared = lambda value: plan.storage_of(value.id) in memory.lane_common(program, frozenset())  # noqa: E731
    kept = [[(op.kind, plan.owner(op.results[0]) in outline.registers(plan, run, program.body))
             for op in run if op.kind != "const"] for run in memory.lane_runs(program.body, shared)]
    assert kept == [[("reduce_sum", False), ("mul", True), ("add", False), ("gt", True), ("cond", False),
                     ("mul", False)],
                    [("mul", True), ("mul", False), ("reduce_sum", True), ("div", True), ("add", False)]]


def test_layers_of_one_shape_share_their_code():
    # spadc/backend/routines.py: W @ h, g @ W and the weight gradient's sum, each emitted once for
    # all the layers of one shape; spadc/backend/outline.py: the runs between them likewise (the
    # first and last layers' differ: an input, the loss). A layer adds calls, not code.
    runs = {}
    for depth in (4, 7):
        emitted = spadc.api.build(frontend.text_source(network(depth, width=8), "deep.spad"), ".", lanes=4).llvm_ir
        routines = re.findall(r'^define internal void @"spadc\.(\w+)\.double\.8x8\.n(?:\.packed)?"', emitted, re.M)
        assert sorted(routines) == ["matvec", "outer_sum", "vecmat"]
        assert len(re.findall(r'call void @"spadc\.matvec\.', emitted)) == depth
        assert len(re.findall(r'call void @"spadc\.outer_sum\.', emitted)) == depth
        runs[depth] = len(re.findall(r'^define internal i64 @"spadc\.run', emitted, re.M))
    assert 0 < runs[4] == runs[7]


@pytest.mark.private_cache  # (kernels made with patched limits)
def test_a_long_run_is_cut_and_a_failed_check_in_it_names_its_sample(monkeypatch):
    # The fuzzer's seed 1600496: one run of 1,528 ops, one function with 573 loops, whose LLVM
    # passes took time growing with the square of its loops. Runs are cut, and a run with a check
    # is a function too: a failed check returns its id through the kernel, naming the sample. A
    # program with many loops runs in runs with one lane too (codegen.py `in_lockstep`). The
    # limits are lowered so that a small program reaches them.
    monkeypatch.setattr(spadc.backend.memory, "RUN_OPS", 16)
    monkeypatch.setattr(spadc.backend.codegen, "LOCKSTEP_LOOPS", 16)
    models = []
    for lanes in (LANES, 1):
        compiled = spadc.api.build(frontend.text_source(LONG_RUN, "long_run.spad"), ".", lanes=lanes)
        assert len(re.findall(r'^define internal i64 @"spadc\.run', compiled.llvm_ir, re.M)) >= 4
        assert '"run.fail' in compiled.llvm_ir
        models.append(spadc.api.model_of(compiled))
        models[-1].init_params(seed=SEED)
    x, labels = RNG.standard_normal((42, 6)), RNG.integers(0, 6, 42)
    (loss, grads), (one_loss, one_grads) = (model.grad(x=x, label=labels) for model in models)
    assert loss == pytest.approx(one_loss, rel=RTOL)
    np.testing.assert_allclose(grads["W"], one_grads["W"], rtol=RTOL, atol=1e-14)
    labels[37] = 9  # sample 37: the sixth lane of a block of 16
    for model in models:
        with pytest.raises(spadc.SpadcError, match=r"sample 37\): label 9 is out of range"):
            model.grad(x=x, label=labels)


def test_a_slice_of_a_stacked_weight_is_a_product_over_lanes():
    # W[l] @ h and g @ W[l] in the loops over l are matrix-matrix products over the lanes (the
    # routines for a block's count, `.n`), not one product per lane (`.1`): W[l] is one pointer.
    emitted = spadc.api.build(frontend.text_source(STACKED, "stacked.spad"), ".", lanes=4).llvm_ir
    routines = set(re.findall(r'^define internal void @"spadc\.(\w+)\.double\.8x8\.(\w+)(?:\.packed)?"', emitted, re.M))
    assert {("matvec", "n"), ("vecmat", "n")} <= routines and not any(count == "1" for _, count in routines)


def test_products_of_large_matrices_over_lanes_pack_their_operands():
    emitted = spadc.api.build(frontend.text_source(WIDE, "wide.spad"), ".", lanes=4).llvm_ir
    packed = set(re.findall(r'^define internal void @"spadc\.(\w+)\.double\.([\dx]+)\.n\.packed"', emitted, re.M))
    assert packed == {("matvec", "130x131"), ("matvec", "130x130"), ("vecmat", "130x130"), ("outer_sum", "130x131"),
                      ("outer_sum", "130x130")}  # (no vecmat of A: x's cotangent is not asked for)
    one_lane = spadc.api.build(frontend.text_source(WIDE, "wide.spad"), ".", lanes=1).llvm_ir
    assert ".packed" not in one_lane  # (one sample reads each entry once: nothing to gain)


def test_large_weights_earn_a_workspace_as_large_as_they_are():
    # 8 layers of 512 x 512 (16 MB of params): 128 lanes' tape is about 9 MB, past LANE_BUDGET
    # (which alone cuts the lanes to 90) and under the params' bytes.
    text = STACKED.replace("f64[8]", "f64[512]").replace("[3, 8, 8]", "[8, 512, 512]").replace(
        "[3, 8]", "[8, 512]").replace("0..3", "0..8").replace("0.4", "0.04")
    exact = spadc.compile_source(text, name="wide_stack.spad").layout["variants"]["exact"]
    assert exact["lanes"] == 128 and spadc.backend.kernels.LANE_BUDGET < exact["workspace"] < 8 * 512 * 512 * 8


def test_small_weights_run_few_lanes_and_large_ones_many(monkeypatch):
    """Params of at most SMALL_PARAMS bytes stay in the caches between blocks: FEW_LANES; the
    digits MLP's (680 KB) earn MAX_LANES. A byte past the threshold changes the choice."""
    kernels = spadc.backend.kernels
    small = spadc.compile_file(example("lstm.spad")).layout["variants"]["exact"]["lanes"]
    large = spadc.compile_file(example("mlp_digits.spad")).layout["variants"]["exact"]["lanes"]
    assert (small, large) == (kernels.FEW_LANES, kernels.MAX_LANES)
    text = "input x: f64[4]\nparam A: f64[4, 4]\nloss sum(A @ x)\n"  # 128 bytes of params
    lanes = []
    for threshold in (128, 127):
        monkeypatch.setattr(kernels, "SMALL_PARAMS", threshold)
        model = spadc.compile_source(text, name=f"edge{threshold}.spad", cache=False)
        lanes.append(model.layout["variants"]["exact"]["lanes"])
    assert lanes == [kernels.FEW_LANES, kernels.MAX_LANES]


@pytest.mark.skipif(not LONG, reason="the long profile (SPADC_LONG=1, which CI runs): its program's kernels are 1 MB "
                    "of LLVM IR, and the quick fuzz test checks lanes on every program it makes")
def test_a_dot_product_rounds_the_same_with_any_lane_count():
    # The fuzzer's seed 1400123: `dot(...)` was a sum LLVM could reassociate, and a sample's loss
    # moved by an ulp between a one-lane and a four-lane build. It now sums in the products' order.
    import fuzzing
    generator, text, model = fuzzing.compiled_program(1400123)
    fuzzing._check_lanes(text, model, generator, 1400123)


def test_lanes_option_is_checked():
    for bad in (0, -1, 1.5, True, 1000):
        with pytest.raises(spadc.SpadcError, match="lanes must be"):
            spadc.compile_source("param x: f64[2]\nloss sum(x * x)", lanes=bad)


def test_a_several_call_gradient_is_the_callers_own_and_the_next_call_writes_elsewhere():
    # The sum of a batch's chunks is made in the first chunk's pooled buffer and handed over, not
    # copied: that buffer must leave the pool, or the next call's chunks would overwrite a result.
    assert calls.CHUNK < BATCH
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(seed=SEED)
    inputs = BATCHES["mlp.spad"]
    first = model.flat_grad(**inputs)[1]
    kept = first.copy()
    second = model.flat_grad(**{k: v[::-1] * (2 if v.dtype.kind == "f" else 1) for k, v in inputs.items()})[1]
    np.testing.assert_array_equal(first, kept)
    assert not np.shares_memory(first, second) and not np.array_equal(first, second)
