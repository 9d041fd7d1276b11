"""Tiered compilation (spadc/backend/tiers.py): quick code first, O3 once a kernel has run enough.

The oracle for the bits is the other tier: both compile the same IR, and the code generator leaves
nothing to the optimiser that could change a result (no fast-math flag, explicit fused
multiply-adds); a control with fast-math flags shows that the comparison sees a difference."""

import math
import os
import threading

import numpy as np
import pytest

import spadc
import spadc.api
from spadc.backend import jit, tiers
from spadrt.calls import Promoting

from conftest import EXAMPLES as EXAMPLES_DIRECTORY, example, example_inputs, quick

SEED = 3
BATCH = 5
RAD_ESTIMATOR = spadc.RAD(keep=0.5)
TIER_EXAMPLES = ("mlp_digits.spad", "reaction_diffusion.spad")  # products and dropout; a stencil loop
PROMOTED = "mlp.spad"  # the model whose promotion is followed
THREADS, THREADED_CALLS_TO_PROMOTION = 4, 25  # each thread's calls: promotion comes in the middle


def _fresh(monkeypatch, policy: str, name: str):
    """The example compiled anew under `policy`: no model kept in this process, no disk cache."""
    monkeypatch.setenv(tiers.ENVIRONMENT_VARIABLE, policy)
    monkeypatch.setattr(spadc.api, "_CACHE", type(spadc.api._CACHE)())
    monkeypatch.setattr(jit, "_recent", type(jit._recent)())
    model = spadc.compile_file(example(name), cache=False)
    model.init_params(seed=SEED)
    return model


def _results(model, inputs) -> list[bytes]:
    """The bits of every kind of kernel a user calls: forward (training, so dropout runs), the
    exact and a sampled gradient, and the forward-mode and Hessian products."""
    forward = model.forward(**inputs, training=True, seed=SEED)
    out = [np.asarray(forward.loss).tobytes()] + [np.asarray(v).tobytes() for v in forward.outputs.values()]
    for estimator in (None, RAD_ESTIMATOR):
        loss, grads = model.grad(**inputs, estimator=estimator, seed=SEED)
        out += [np.float64(loss).tobytes()] + [g.tobytes() for g in grads.values()]
    direction = {k: np.full_like(v, 0.5) for k, v in model.params.items()}
    tangent = model.jvp(direction, **inputs)
    out += [np.asarray(tangent.loss_tangent).tobytes()] + [v.tobytes() for v in tangent.tangents.values()]
    out += [v.tobytes() for v in model.hvp(direction, **inputs).values()]
    return out


@pytest.mark.parametrize("name", quick(sorted(f for f in os.listdir(EXAMPLES_DIRECTORY) if f.endswith(".spad")),
                                        TIER_EXAMPLES))
def test_quick_and_optimised_code_give_the_same_bits(monkeypatch, name):
    quick_model = _fresh(monkeypatch, "quick", name)
    inputs = example_inputs(quick_model.layout, np.random.default_rng(SEED), BATCH)
    assert _results(quick_model, inputs) == _results(_fresh(monkeypatch, "optimised", name), inputs)


SUM_OF_PRODUCTS = "param w: f64[37] ~ normal(0, 1)\ninput x: f64[37]\nloss sum(w * x) ^ 2\n"


def test_the_bits_comparison_sees_an_optimiser_allowed_to_reassociate(monkeypatch):
    """The control: optimised with fast-math flags on every float operation (which let LLVM
    reorder a sum), a dot product's gradient is not the quick code's to the bit."""
    real = jit.optimise

    def fast_math(llvm_ir, *args, **kwargs):
        for op in ("fadd", "fmul"):
            llvm_ir = llvm_ir.replace(f" = {op} double", f" = {op} fast double")
        return real(llvm_ir, *args, **kwargs)

    x = np.random.default_rng(SEED).standard_normal((8, 37))
    results = []
    for policy in ("quick", "optimised"):
        monkeypatch.setenv(tiers.ENVIRONMENT_VARIABLE, policy)
        monkeypatch.setattr(jit, "optimise", fast_math)
        model = spadc.compile_source(SUM_OF_PRODUCTS, name=f"control-{policy}.spad", cache=False)
        results.append(model.grad(x=x)[1]["w"].tobytes())
        monkeypatch.setattr(jit, "optimise", real)
        unflagged = spadc.compile_source(SUM_OF_PRODUCTS, name=f"unflagged-{policy}.spad", cache=False)
        results.append(unflagged.grad(x=x)[1]["w"].tobytes())
    quick, quick_unflagged, fast, optimised = results
    assert quick == quick_unflagged == optimised and fast != quick


def _promotion_case(monkeypatch):
    monkeypatch.setenv(tiers.ENVIRONMENT_VARIABLE, "tiered")
    monkeypatch.setattr(spadc.api, "_CACHE", type(spadc.api._CACHE)())
    model = spadc.compile_file(example(PROMOTED), cache=False)
    inputs = example_inputs(model.layout, np.random.default_rng(SEED), 16)
    return model, inputs


def test_a_kernel_is_optimised_when_its_work_reaches_the_cost_of_compiling_it(monkeypatch):
    model, inputs = _promotion_case(monkeypatch)
    first = model.grad(**inputs)
    entry, function, owner = model._variants["exact"]
    assert isinstance(function, Promoting) and owner.optimised is None
    per_call = 16 * entry["sample_work"]
    calls_to_promotion = math.ceil(owner.budget / per_call)  # counted before each call, the first one included
    for call in range(2, calls_to_promotion):
        assert model.grad(**inputs)[1]["W1"].tobytes() == first[1]["W1"].tobytes()
    assert owner.optimised is None and owner.work == (calls_to_promotion - 1) * per_call
    promoted = model.grad(**inputs)  # this call runs optimised code
    entry, function, owner = model._variants["exact"]
    assert owner.optimised is not None and not isinstance(function, Promoting)
    assert [g.tobytes() for g in promoted[1].values()] == [g.tobytes() for g in first[1].values()]


def test_one_call_too_large_for_the_quick_code_runs_optimised(monkeypatch):
    monkeypatch.setenv(tiers.ENVIRONMENT_VARIABLE, "tiered")
    nested = "param p: f64 = 1.0\nlet a = p\n" + "for i in 0..20000 {\nfor j in 0..20000 {\na = a * 1.0\n}\n}\nloss a\n"
    model = spadc.compile_source(nested, name="nested.spad", cache=False)
    assert model.grad() == (1.0, {"p": 1.0})
    assert model._variants["exact"][2].optimised is not None


def test_threads_calling_through_a_promotion_get_the_sequential_bits(monkeypatch):
    expected_model = _fresh(monkeypatch, "quick", PROMOTED)
    inputs = example_inputs(expected_model.layout, np.random.default_rng(SEED), 16)
    expected = [g.tobytes() for g in expected_model.grad(**inputs, threads=1)[1].values()]
    model, _ = _promotion_case(monkeypatch)
    model.init_params(seed=SEED)
    model.grad(**inputs, threads=1)
    owner = model._variants["exact"][2]
    per_call = 16 * model.layout["variants"]["exact"]["sample_work"]
    owner.work = owner.budget - THREADED_CALLS_TO_PROMOTION * per_call  # (as if it had run that much already)
    outcomes, errors = [], []

    def worker():
        try:
            for _ in range(THREADED_CALLS_TO_PROMOTION):
                outcomes.append([g.tobytes() for g in model.grad(**inputs, threads=1)[1].values()] == expected)
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and owner.optimised is not None
    assert outcomes == [True] * THREADS * THREADED_CALLS_TO_PROMOTION


@pytest.mark.private_cache
def test_optimised_code_is_cached_and_a_later_process_loads_it(monkeypatch):
    model, inputs = _promotion_case(monkeypatch)
    cached = spadc.compile_file(example(PROMOTED))
    cached.grad(**inputs)
    owner = cached._variants["exact"][2]
    owner.work = owner.budget  # (as if it had run long enough)
    want = [g.tobytes() for g in cached.grad(**inputs)[1].values()]
    assert owner.optimised is not None
    optimised = []
    real = jit.optimise
    monkeypatch.setattr(jit, "optimise", lambda *args, **kwargs: optimised.append(1) or real(*args, **kwargs))
    monkeypatch.setattr(spadc.api, "_CACHE", type(spadc.api._CACHE)())  # a new process: nothing in memory
    monkeypatch.setattr(jit, "_recent", type(jit._recent)())
    again = spadc.compile_file(example(PROMOTED))
    assert [g.tobytes() for g in again.grad(**inputs)[1].values()] == want
    assert optimised == [] and not isinstance(again._variants["exact"][1], Promoting)


def test_a_policy_that_does_not_exist_is_an_error(monkeypatch):
    monkeypatch.setenv(tiers.ENVIRONMENT_VARIABLE, "fast")
    with pytest.raises(spadc.SpadcError, match="SPADC_JIT must be one of tiered, optimised, quick"):
        spadc.compile_source("param p: f64\nloss p * p\n", cache=False).grad()
