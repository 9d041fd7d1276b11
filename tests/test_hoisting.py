"""Sample-independent hoisting (spadc/passes/hoist.py): what depends on params alone runs once per
kernel call. Oracles: the reference interpreter on the program as written (values and gradients,
at batch sizes that split into chunks and lanes), central differences, and the structure of the
split (work counted by ops, not timed)."""

import numpy as np
import pytest

import spadc
from spadc.ir.core import walk_ops
from spadc.ir.interpret import RunOptions, evaluate
from spadc.ir.verify import verify
from spadc.passes import hoist

from conftest import example, run_cli
from gradcheck import check_finite_differences, differentiated

SEED = 20261205
RTOL = 1e-12  # compiled (hoisted) against interpreted (as written): the same ops, summed in another order
BATCHES = (1, 3, 300)  # one sample; a few; more than a chunk of 128, so several calls and threads

PROGRAMS = {
    "top level": "param W: f64[3, 3]\nparam b: f64[3]\ninput x: f64[3]\nlet V = tanh(W) @ transpose(W) + exp(b)\n"
                 "loss sum(tanh(V @ x + b * sum(W)))\n",
    "comprehension": "param W: f64[4, 3]\ninput x: f64[3]\nlet s = [sum(exp(W[i]) * x) / (1.0 + W[i, 0] ^ 2) for i in 0..4]\n"
                     "loss logsumexp(s)\n",
    "loop from 2": "param W: f64[5, 3]\ninput x: f64[3]\nlet h = x\nfor t in 2..5 {\n  h = tanh(h * sigmoid(W[t]) + W[t - 1] * 2.0)\n}\n"
                   "loss sum(h * h)\n",
    "cond and integers": "param W: f64[3, 3]\ninput x: f64[3]\nlet j = argmax(W[0])\nlet c = if sum(W) > 0.0 then exp(W) else W * W\n"
                         "loss sum(c @ x) * x[j] + float(j)\n",
    "param-only loss term": "param p: f64[2]\ninput x: f64\nloss sum(exp(p)) + x * p[0]\n",
    "while": "param a: f64\ninput y: f64\nlet z = y\nlet n = 0\nwhile z * z > 1.0 and n < 20 max 30 {\n  z = z * sigmoid(a)\n  n = n + 1\n}\n"
             "loss z * exp(a)\n",
    # A loop of params alone whose count the samples read: it runs again per sample, with the hoisted
    # value its body captures crossing (the fuzzer's seed 1103793 read it undefined: NaN).
    "param-only while read per sample": "param a: f64[3]\nparam c: f64\ninput x: f64[3]\nlet s = a * 0.5\n"
                                        "let z = tanh(a)\nlet n = 0\nwhile n < 2 and c < 5.0 max 4 {\n  z = z - sum(s)\n"
                                        "  n = n + 1\n}\nloss sum(z * x) + float(n) * x[0]\n",
}


def _inputs(program, batch, rng):
    return {d.name: (rng.integers(0, 3, batch) if d.value.type.dtype == "i64" else
                     rng.standard_normal((batch,) + d.value.type.shape)) for d in program.inputs}


def _reference(program, params, inputs, batch):
    grads, losses = None, []
    for s in range(batch):
        sample = {k: v[s] for k, v in inputs.items()}
        result = evaluate(differentiated(program), params, sample, RunOptions(sample=s))
        losses.append(result.loss)
        part = {k: result.outputs[k] for k in params}
        grads = part if grads is None else {k: grads[k] + part[k] for k in grads}
    return np.mean(losses), {k: v / batch for k, v in grads.items()}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_split_programs_verify_and_compute_what_the_program_as_written_does(name):
    text = PROGRAMS[name]
    program = spadc.frontend.lower(spadc.check_text(text, "t.spad"))
    split = hoist.split(program)
    assert split is not None, name
    for part in (split.prologue, split.per_sample, split.product):
        verify(part)
    model = spadc.compile_source(text, name="t.spad")
    rng = np.random.default_rng(SEED)
    params = {k: np.asarray(0.5 * rng.standard_normal(v.shape)) for k, v in model.params.items()}  # no ties: argmax is smooth
    for batch in BATCHES:
        inputs = _inputs(program, batch, rng)
        loss, grads = model.grad(params=params, **inputs)
        reference_loss, reference = _reference(program, params, inputs, batch)
        assert loss == pytest.approx(reference_loss, rel=RTOL), (name, batch)
        for key in grads:
            np.testing.assert_allclose(grads[key], reference[key], rtol=RTOL, atol=1e-14, err_msg=f"{name} {key} {batch}")
        losses = model.loss(params=params, **inputs)
        assert np.mean(losses) == pytest.approx(reference_loss, rel=RTOL)
    one = {k: v[:1] for k, v in inputs.items()}
    check_finite_differences(lambda p: float(np.mean(model.loss(params=p, **one))), params,
                             model.grad(params=params, **one)[1], rng)


def test_the_mixtures_per_component_matrices_are_built_once_per_call():
    program = spadc.frontend.lower(spadc.check_text(open(example("gmm.spad")).read(), "gmm.spad"))
    split = hoist.split(program)
    per_sample = [op.kind for op in walk_ops(split.per_sample.body)]
    once = [op.kind for op in walk_ops(split.prologue.body)]
    # exp(d[k]), tril(L[k]), the prior and logsumexp(alpha): all in the prologue, none per sample
    assert "triangle" in once and "triangle" not in per_sample
    assert once.count("exp") == 3 and per_sample.count("exp") == 1  # (the one left is the data's logsumexp)
    assert not any(all(a.id in {p.value.id for p in split.per_sample.params} for a in op.args) and op.args
                   and op.kind not in ("index", "reshape", "broadcast", "transpose")
                   for op in walk_ops(split.per_sample.body)), "an op of params alone is left per sample"


def test_what_is_not_hoisted():
    def split(text):
        return hoist.split(spadc.frontend.lower(spadc.check_text(text, "t.spad")))
    assert split("param p: f64[3]\nloss sum(exp(p))\n") is None  # no input: one evaluation per call anyway
    assert split("param W: f64[3, 3]\ninput x: f64[3]\nloss sum(W[0] * x)\n") is None  # views of params only
    # a draw differs by sample: dropout of a param stays per sample
    dropped = split("param W: f64[3]\ninput x: f64[3]\nloss sum(dropout(W, 0.5) * x) + sum(exp(W))\n")
    assert "dropout_mask" not in {op.kind for op in walk_ops(dropped.prologue.body)}
    big = hoist.HOIST_BYTES // 8 + 1  # more hoisted bytes than the budget: memory before time
    assert split(f"param w: f64[{big}]\ninput x: f64\nloss sum(exp(w)) * x + sum(exp(w) * x)\n") is None


def test_dropout_of_a_param_draws_a_mask_per_sample_as_written():
    text = "param W: f64[6]\ninput x: f64[6]\nloss sum(dropout(exp(W), 0.5) * x)\n"
    model = spadc.compile_source(text, name="t.spad")  # (the file's name is part of the draws' keys)
    model.init_params(seed=SEED)
    params = {k: v.copy() for k, v in model.params.items()}
    x = np.random.default_rng(SEED).standard_normal((4, 6))
    program = spadc.check_text(text, "t.spad")
    losses = model.loss(params=params, x=x, training=True, seed=7, step=2)
    for s in range(4):
        reference = evaluate(program, params, {"x": x[s]}, RunOptions(training=True, seed=7, step=2, sample=s)).loss
        assert losses[s] == pytest.approx(reference, rel=RTOL)


@pytest.mark.parametrize("batch", [3, 300], ids=["one call", "several calls"])
def test_a_run_time_error_of_the_hoisted_part_is_located(batch):
    model = spadc.compile_source("param A: f64[2, 2]\ninput b: f64[2]\nloss sum(solve(A * 2.0, A[0]) * b)\n",
                                 name="m.spad")
    with pytest.raises(spadc.SpadcError, match=r"m\.spad:3:10: .*\(in the part computed once per call\).*singular"):
        model.grad(params={"A": np.zeros((2, 2))}, b=np.ones((batch, 2)))


def test_a_batch_of_several_calls_hoists_once_and_finishes_once_whatever_the_threads(monkeypatch):
    """spadrt/split_kernels.py: the hoisted values are made once per batch, not once per call, and
    their adjoints finished once; the gradient is the interpreter's (the split's oracle above), the
    same bits on one thread or two, and within rounding of the kernel's own calls of one chunk each."""
    from spadrt import split_kernels
    model = spadc.compile_file(example("gmm.spad"))
    model.init_params(seed=SEED)
    x = np.random.default_rng(SEED).standard_normal((1000, 2))
    counted = {"parts": 0, "finish_sum": 0}
    for name in counted:
        def spy(self, *arguments, _name=name, _original=getattr(split_kernels.SplitKernels, name)):
            counted[_name] += 1
            return _original(self, *arguments)
        monkeypatch.setattr(split_kernels.SplitKernels, name, spy)
    loss, grads, _ = model.flat_grad(inputs={"x": x}, threads=1)
    chunk = model.layout["variants"]["exact"]["chunk"]
    assert -(-len(x) // chunk) > 2 and counted == {"parts": 1, "finish_sum": 1}
    again = model.flat_grad(inputs={"x": x}, threads=2)
    assert again[0] == loss and np.array_equal(again[1], grads)
    calls = [model.flat_grad(inputs={"x": x[k:k + chunk]}, threads=1) for k in range(0, len(x), chunk)]
    weights = [min(chunk, len(x) - k) / len(x) for k in range(0, len(x), chunk)]
    assert counted["parts"] == 2  # (the batch again on two threads; a call of one chunk runs the kernel itself)
    np.testing.assert_allclose(grads, sum(w * g for w, (_, g, _) in zip(weights, calls)), rtol=RTOL, atol=RTOL)
    expected_loss, expected = _reference(spadc.frontend.lower(spadc.check_text(open(example("gmm.spad")).read(),
                                                                               "gmm.spad")),
                                         model.params, {"x": x[:300]}, 300)
    got_loss, got = model.grad(inputs={"x": x[:300]})[:2]
    assert got_loss == pytest.approx(expected_loss, rel=RTOL)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-10, atol=1e-12)


def test_spadc_ir_shows_the_hoisted_part():
    result = run_cli("ir", example("gmm.spad"))
    assert result.returncode == 0
    assert result.stdout.startswith("# once per call, before the samples")
    assert "program gmm.prologue" in result.stdout and "\n# per sample" in result.stdout
    gradient_text = run_cli("ir", "--grad", example("gmm.spad")).stdout
    assert "# once per call, after the samples" in gradient_text
