"""The Python API: bad inputs are SpadcErrors, long loops compile like short ones, estimators."""

import re
import subprocess
import sys

import numpy as np
import pytest

import spadc
from spadc.api import build
from spadc.errors import Source

from conftest import example
from gradcheck import SEED, check_dot_product, check_finite_differences

LONG_LOOP = """
const T = {trips}
input x: f64[3]
param W: f64[3, 3] ~ normal(0, 0.3)
param b: f64[3]
let h = x
for t in 0..T {{
  h = tanh(W @ h + b + 0.1 * x)
}}
loss sum(h * h)
"""


def test_a_long_loop_compiles_to_the_same_code_as_a_short_one():
    # (With lanes given: chosen by size, a short loop's kernels run more samples side by side.)
    short = build(Source("loop.spad", LONG_LOOP.format(trips=100)), ".", lanes=4)
    long = build(Source("loop.spad", LONG_LOOP.format(trips=100000)), ".", lanes=4)
    # The code is the same instruction for instruction; only integer constants differ (the trip
    # count and the workspace offsets after the tape), so compile time cannot depend on T.
    def shape_of(llvm_ir):
        return re.sub(r"\b\d+\b", "N", llvm_ir)
    assert short.llvm_ir != long.llvm_ir
    assert shape_of(short.llvm_ir) == shape_of(long.llvm_ir)
    tape = lambda compiled: compiled.layout["variants"]["exact"]["tape_bytes"]  # noqa: E731
    assert tape(long) > 900 * tape(short)  # the tape, not the code, grows


def test_gradient_of_a_100000_iteration_loop_is_correct():
    model = spadc.compile_source(LONG_LOOP.format(trips=100000), name="loop.spad")
    model.init_params(seed=SEED)
    x = np.array([0.5, -0.3, 0.8])
    params = {k: v.copy() for k, v in model.params.items()}
    loss, grads = model.grad(x=x)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())
    assert np.abs(grads["W"]).max() > 1e-6
    rng = np.random.default_rng(SEED)
    check_finite_differences(lambda p: model.loss(params=p, x=x), params, grads, rng)
    check_dot_product(lambda p: model.loss(params=p, x=x), params, grads, rng)


# ---- bad inputs from Python --------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp():
    return spadc.compile_file(example("mlp.spad"))


X = np.zeros(64)


@pytest.mark.parametrize("inputs,message", [
    ({"x": X}, "missing input `label`"),
    ({"x": X, "label": 1, "extra": 3}, "unknown input `extra`"),
    ({"x": np.zeros(63), "label": 1}, "input `x` must have shape [64]"),
    ({"x": np.zeros((2, 3, 64)), "label": 1}, "input `x` must have shape [64]"),
    ({"x": X, "label": 1.0}, "input `label` must be integers (i64), got float64"),
    ({"x": X, "label": "3"}, "input `label` must be numeric"),
    ({"x": np.zeros(64, dtype=bool), "label": 1}, "input `x` must be numbers (f64), got bool"),
    ({"x": [[1, 2], [3]], "label": 1}, "input `x` is not an array of numbers"),
    ({"x": np.zeros((4, 64)), "label": np.zeros(3, dtype=int)}, "has a batch of 3 samples but `x` has 4"),
    ({"x": np.zeros((0, 64)), "label": 1}, "is an empty batch"),
])
def test_bad_inputs_raise_spadc_error(mlp, inputs, message):
    for call in (mlp.forward, mlp.loss, mlp.grad):
        with pytest.raises(spadc.SpadcError) as info:
            call(**inputs)
        assert message in str(info.value)


@pytest.mark.parametrize("label", [10, -1, 2**40])
def test_label_out_of_range_is_a_spadc_error_naming_the_line(mlp, label):
    for call in (mlp.loss, mlp.grad):
        with pytest.raises(spadc.SpadcError) as info:
            call(x=X, label=label)
        text = str(info.value)
        assert "mlp.spad:18:28: error: run-time error: label" in text and "out of range for 10 classes" in text


def test_label_out_of_range_in_a_batch_names_the_sample(mlp):
    with pytest.raises(spadc.SpadcError, match=r"sample 2\): label 11 is out of range"):
        mlp.grad(x=np.zeros((4, 64)), label=np.array([1, 2, 11, 3]))


def test_a_dynamic_index_out_of_range_never_reads_out_of_bounds():
    model = spadc.compile_source("input k: i64\nparam x: f64[3]\nloss x[k] + x[2 - k]", name="k.spad")
    assert model.loss(k=1) == 0.0
    for k in (3, -1, 1 << 62):
        with pytest.raises(spadc.SpadcError, match="out of range"):
            model.grad(k=k)


def test_bad_params_raise_spadc_error(mlp, tmp_path):
    with pytest.raises(spadc.SpadcError, match="missing param `b2`"):
        mlp.loss(x=X, label=1, params={k: v for k, v in mlp.params.items() if k != "b2"})
    np.savez(tmp_path / "partial.npz", **{k: v for k, v in mlp.params.items() if k != "b2"})
    with pytest.raises(spadc.SpadcError, match=r"partial\.npz: missing param `b2`"):  # which file (issue 29)
        mlp.load(tmp_path / "partial.npz")
    with pytest.raises(spadc.SpadcError, match="param `W1` must have shape"):
        mlp.loss(x=X, label=1, params={**mlp.params, "W1": np.zeros(3)})
    with pytest.raises(spadc.SpadcError, match="unknown param `W3`"):
        mlp.loss(x=X, label=1, params={**mlp.params, "W3": np.zeros(3)})
    with pytest.raises(spadc.SpadcError, match="flat params array"):
        mlp.loss(x=X, label=1, params=np.zeros(5))


def test_loading_a_missing_or_mismatched_file(mlp, tmp_path):
    with pytest.raises(spadc.SpadcError, match="cannot read parameters"):
        mlp.load(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", W1=np.zeros(2))
    with pytest.raises(spadc.SpadcError):
        mlp.load(str(tmp_path / "bad.npz"))


def test_integer_division_by_zero_from_an_input_is_a_spadc_error():
    model = spadc.compile_source("input k: i64\nparam w: f64\nloss w * float(10 // k + 10 % k)", name="d.spad")
    assert model.loss(k=3, params={"w": 1.0}) == 4.0
    assert model.loss(k=-3, params={"w": 1.0}) == -6.0  # Python: 10 // -3 == -4 and 10 % -3 == -2
    with pytest.raises(spadc.SpadcError, match="integer division by zero"):
        model.loss(k=0)


def test_compile_errors_raise_spadc_error():
    with pytest.raises(spadc.SpadcError, match="m:1:10: error: undefined name `y`"):
        spadc.compile_source("loss 2 * y", name="m")
    with pytest.raises(spadc.SpadcError, match="dtype must be one of"):
        spadc.compile_source("param w: f64\nloss w", dtype="f16")


def test_estimators_by_name_and_bad_configurations(mlp):
    assert mlp.grad(x=X, label=1, estimator="exact")[0] == mlp.grad(x=X, label=1, estimator=spadc.Exact())[0]
    assert mlp.grad(x=X, label=1, estimator="rad")[0] == mlp.grad(x=X, label=1)[0]  # the loss is exact
    for bad, message in [("adam", "unknown estimator"), (3, "an estimator must be")]:
        with pytest.raises(spadc.SpadcError, match=message):
            mlp.grad(x=X, label=1, estimator=bad)
    for make, message in [(lambda: spadc.RAD(keep=0), "keep must be in"), (lambda: spadc.RAD(policy="all"), "policy"),
                          (lambda: spadc.SPAD(refresh=0), "refresh"), (lambda: spadc.SPAD(policy="topk", score="uniform"),
                                                                       "ranks nothing")]:
        with pytest.raises(spadc.SpadcError, match=message):
            make()


@pytest.mark.parametrize("module", ["spadc.backend.conv", "spadc.backend.gates", "spadc.backend.linalg"])
def test_a_backend_module_imports_first_in_a_fresh_process(module):
    # emitters gathers these modules' emitters and they use its helpers: a cycle the package breaks.
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
