"""Threads: one Model called from many Python threads, and batches spread over cores.

Oracles: sequential calls on the same model (bit for bit), and the same call on one thread.
"""

import threading

import numpy as np
import pytest

import spadc
from spadrt import calls

from conftest import example

THREADS = 4
CALLS_PER_THREAD = 10
RNG = np.random.default_rng(7)
X = RNG.standard_normal((40, 64))  # more than one chunk of calls.CHUNK samples
LABEL = np.arange(40) % 10


def _call(model, k):
    """A different call for each k: batch, estimator, seed, and a params override now and then."""
    rows = slice(k % 5, k % 5 + 3 + 7 * (k % 4))
    estimator = [None, spadc.RAD(keep=0.2), spadc.RAD(keep=0.5, draw="bernoulli")][k % 3]
    params = {name: value * 0.5 for name, value in model.params.items()} if k % 4 == 3 else None
    loss, grads = model.grad(x=X[rows], label=LABEL[rows], estimator=estimator, seed=k, params=params)
    return loss, grads, model.loss(x=X[rows], label=LABEL[rows], params=params)


def test_many_threads_calling_one_model_get_what_sequential_calls_get():
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.init_params(1)
    expected = {k: _call(model, k) for k in range(THREADS * CALLS_PER_THREAD)}
    got, errors = {}, []

    def worker(first):
        try:
            for k in range(first, THREADS * CALLS_PER_THREAD, THREADS):
                got[k] = _call(model, k)
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for k, (loss, grads, losses) in expected.items():
        assert got[k][0] == loss, k
        np.testing.assert_array_equal(got[k][2], losses)
        for name in grads:
            np.testing.assert_array_equal(got[k][1][name], grads[name], err_msg=f"call {k}, {name}")


@pytest.mark.parametrize("estimator", [None, spadc.RAD(keep=0.1), spadc.SPAD(keep=0.1, refresh=2)])
def test_a_batch_gives_the_same_bits_on_any_number_of_threads(estimator):
    model = spadc.compile_file(example("mlp_digits.spad"))
    results = []
    for threads in (1, 2, 3):
        model.init_params(2)
        if isinstance(estimator, spadc.SPAD):
            estimator = spadc.SPAD(keep=0.1, refresh=2)  # a fresh state for each run
        steps = [model.grad(x=X, label=LABEL, estimator=estimator, seed=5, threads=threads) for _ in range(3)]
        results.append((steps, model.forward(x=X, label=LABEL, threads=threads).outputs["logits"]))
    (first, logits), *others = results
    for steps, other_logits in others:
        np.testing.assert_array_equal(other_logits, logits)
        for (loss, grads), (loss0, grads0) in zip(steps, first):
            assert loss == loss0
            for name in grads:
                np.testing.assert_array_equal(grads[name], grads0[name])


def test_a_chunked_batch_agrees_with_its_samples_one_by_one():
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.init_params(3)
    loss, grads = model.grad(x=X, label=LABEL)
    singles = [model.grad(x=X[i], label=LABEL[i]) for i in range(len(X))]
    assert loss == pytest.approx(np.mean([s[0] for s in singles]), rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], np.mean([s[1][name] for s in singles], axis=0), rtol=1e-12,
                                   atol=1e-15)


def test_a_run_time_error_names_the_sample_in_the_whole_batch_from_any_chunk():
    model = spadc.compile_file(example("mlp_digits.spad"))
    label = LABEL.copy()
    label[37] = 12  # in the second chunk
    with pytest.raises(spadc.SpadcError, match=r"sample 37\b.*label 12 is out of range"):
        model.grad(x=X, label=label, threads=2)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    model = spadc.compile_file(example("mlp.spad"))
    with pytest.raises(spadc.SpadcError, match="threads must be a positive integer"):
        model.grad(x=X[0], label=1, threads=threads)


def test_chunks_do_not_depend_on_the_thread_count():
    assert calls.chunks(300) == [(0, 128), (128, 256), (256, 300)]


# A gather of one row of a large table per sample: little work per sample beside a gradient of
# 60,000 entries, so each kernel call takes more samples than calls.CHUNK (spadc/backend/kernels.py).
GATHER = ("param table: f64[20000, 3] ~ normal(0, 1)\nparam scale: f64 = 1.5\ninput row: i64\ninput y: f64[3]\n"
          "loss sum((tanh(table[row]) * scale - y) ^ 2)")


def test_a_gather_model_takes_larger_chunks_with_the_same_bits_on_any_thread_count():
    model = spadc.compile_source(GATHER, name="gather.spad")
    model.init_params(3)
    rng = np.random.default_rng(5)
    n = 20000  # two whole chunks and a shorter one
    rows, y = rng.integers(0, 20000, n), rng.standard_normal((n, 3))
    results = [model.grad(row=rows, y=y, threads=t) for t in (1, 2, 3)]
    chunk = model._variant(None)[0]["chunk"]
    assert calls.CHUNK < chunk < n and chunk % calls.CHUNK == 0
    for loss, grads in results[1:]:
        assert loss == results[0][0] and all(np.array_equal(grads[k], results[0][1][k]) for k in grads)
    # NumPy, by hand: d/dtable[r] = 2 (tanh(t) s - y) s (1 - tanh(t)^2), summed per row, over n.
    table, scale = model.params["table"], model.params["scale"]
    h = np.tanh(table[rows])
    residual = h * scale - y
    expected_table = np.zeros_like(table)
    np.add.at(expected_table, rows, 2 * residual * scale * (1 - h * h) / n)
    loss, grads = results[0]
    assert loss == pytest.approx(np.mean(np.sum(residual ** 2, axis=1)), rel=1e-13)
    np.testing.assert_allclose(grads["table"], expected_table, rtol=1e-12, atol=1e-18)
    assert grads["scale"] == pytest.approx(np.mean(np.sum(2 * residual * h, axis=1)), rel=1e-12)
