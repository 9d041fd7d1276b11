"""Past one machine, on Ray (spadc/cluster.py): on a real two-node Ray cluster on this machine, the
exact, RAD and ES gradients and a whole `fit` equal their single-process results to the bit, also
when a worker is killed mid-epoch; sweeps give the local rows; Ctrl-C leaves the last checkpoint
whole; a worker with another layout is refused; what cannot run there says so. The cluster tests are
skipped without Ray (the optional extra `pip install .[ray]`; CI's second step installs it); the
tests of spadc without Ray run always."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import spadc
import spadrt.training
from spadc import cluster_training
from spadc.cluster_training import DataParallel

from conftest import example, run_cli

SEED = 5
OBJECT_STORE = 80 << 20  # bytes per node: Ray's smallest is 75 MB
FIT_SAMPLES, FIT_BATCH, FIT_EPOCHS = 1024, 256, 2  # 4 steps an epoch, each of 2 chunks
ES_PARTICLES = 4096
LINK_WAIT = 2.0  # seconds a worker waits for its peers' links in the test of workers that cannot reach each other


def _digits(count: int) -> dict:
    data = np.load(example("data/digits_train.npz"))
    return {"x": data["x"][:count], "label": data["label"][:count]}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_without_ray_a_cluster_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is absent
    model = spadc.compile_file(example("mlp.spad"))
    with pytest.raises(spadc.SpadcError, match=r'pip install "spadc\[ray\]"'):
        model.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64), cluster=spadc.Ray())


def test_importing_and_using_spadc_never_imports_ray():
    code = ("import sys, numpy as np, spadc; m = spadc.compile_file(sys.argv[1]); "
            "m.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64)); spadc.Ray(workers=2); "
            "print('ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, example("mlp.spad")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_workers_beyond_the_free_cpus_are_refused_not_waited_for(cluster):
    model = spadc.compile_file(example("mlp.spad"))
    model.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64), cluster=cluster)  # its workers hold every CPU
    with pytest.raises(spadc.SpadcError, match="1 workers need 1 free CPUs .* has 0 free of 2"):
        model.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64), cluster=spadc.Ray(workers=1))


@pytest.mark.parametrize("options, message", [({"workers": 0}, "workers must be a positive integer"),
                                              ({"address": 3}, "address must be None")])
def test_bad_cluster_options_are_named(options, message):
    with pytest.raises(spadc.SpadcError, match=message):
        spadc.Ray(**options)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="spadc.Ray needs Ray (optional extra: pip install .[ray])")
    from ray.cluster_utils import Cluster
    ray.shutdown()  # a Ray instance another test of this process made (the README's example)
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": OBJECT_STORE})
    nodes.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    spread = spadc.Ray()
    try:
        yield spread
    finally:
        spread.close()
        ray.shutdown()
        nodes.shutdown()


def _kill_a_worker_on_call(monkeypatch, cluster, call: int, method=None):
    """Kill worker 1's process (SIGKILL) as the `call`-th call (from 1) of `method` begins (by
    default the cluster's `_run`, which sends a share to each worker). What worker 1 holds is lost,
    as when a machine goes down mid-step."""
    owner, name = method or (type(cluster), "_run")
    calls, original = [0], getattr(owner, name)
    process = cluster.ray.get(cluster.actors[1].process.remote())  # (asked now: not queued behind its work)

    def killing(self, *arguments):
        calls[0] += 1
        if calls[0] == call:
            os.kill(process, signal.SIGKILL)
        return original(self, *arguments)

    monkeypatch.setattr(owner, name, killing)


@pytest.mark.parametrize("estimator", [None, spadc.RAD(keep=0.3)], ids=["exact", "rad"])
def test_a_batch_gradient_is_the_single_process_one_to_the_bit(cluster, estimator):
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.init_params(SEED)
    data = _digits(1000)  # 8 chunks, the last one short
    here = model.grad(inputs=data, estimator=estimator, training=True, seed=SEED, step=3, sample_offset=7)
    there = model.grad(inputs=data, estimator=estimator, training=True, seed=SEED, step=3, sample_offset=7,
                       cluster=cluster)
    assert here[0] == there[0]
    assert _same(here[1], there[1])


def test_a_batch_of_one_chunk_is_the_single_process_gradient_to_the_bit(cluster):
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.init_params(SEED)
    data = _digits(100)  # one chunk: one worker's, unweighted
    here = model.grad(inputs=data, training=True, seed=SEED)
    there = model.grad(inputs=data, training=True, seed=SEED, cluster=cluster)
    assert here[0] == there[0]
    assert _same(here[1], there[1])


def test_a_split_kernels_gradient_and_fit_are_the_single_process_ones_to_the_bit(cluster):
    """A mixture's kernel computes its per-component matrices once per batch and finishes their
    adjoints once (spadrt/split_kernels.py): the driver finishes a gradient's sum, each worker its
    run of a fit's step."""
    model = spadc.compile_file(example("gmm.spad"))
    model.init_params(SEED)
    x = np.random.default_rng(SEED).standard_normal((1000, 2))
    here = model.grad(inputs={"x": x}, seed=SEED)
    assert "hoisted" in model.layout["variants"]["exact"]
    there = model.grad(inputs={"x": x}, seed=SEED, cluster=cluster)
    assert here[0] == there[0] and _same(here[1], there[1])
    finals = []
    for spread in (None, cluster):
        model.init_params(SEED)
        model.fit({"x": x}, epochs=1, batch_size=500, optimizer=spadc.Adam(lr=1e-2), seed=SEED, cluster=spread)
        finals.append(model.flat_params.copy())
    assert np.array_equal(*finals)


def test_an_es_gradient_of_4096_particles_is_the_single_process_one_to_the_bit(cluster, monkeypatch):
    model = spadc.compile_file(example("es_digits.spad"))
    model.init_params(SEED)
    data, estimator = _digits(128), spadc.ES(sigma=0.1, particles=ES_PARTICLES)
    here = model.grad(inputs=data, estimator=estimator, seed=SEED, step=2)
    assert _same(here[1], model.grad(inputs=data, estimator=estimator, seed=SEED, step=2, cluster=cluster)[1])
    before = cluster.replaced
    _kill_a_worker_on_call(monkeypatch, cluster, 1)
    there = model.grad(inputs=data, estimator=estimator, seed=SEED, step=2, cluster=cluster)
    assert cluster.replaced == before + 1
    assert here[0] == there[0]
    assert _same(here[1], there[1])


def test_fit_on_the_digits_mlp_is_the_single_process_run_to_the_bit_even_with_a_worker_killed(cluster, monkeypatch):
    model = spadc.compile_file(example("mlp_digits.spad"))
    data = _digits(FIT_SAMPLES)
    epochs = FIT_EPOCHS + 1  # one call for the first epoch, one for the others (below), where the worker is lost
    monkeypatch.setattr(cluster_training, "CALL_SECONDS", 1e9)
    finals = []
    for spread in (None, cluster, cluster):
        if len(finals) == 2:  # the third run loses a worker in the middle of its run
            # (the workers linked by the last fit, this one waits first for its first epoch, then for
            # the call of the others: lost there, both calls are run again, from the state at the start)
            _kill_a_worker_on_call(monkeypatch, cluster, 2, (DataParallel, "_results"))
            before = cluster.replaced
        model.init_params(SEED)
        adam = spadc.Adam(lr=1e-3)
        history = model.fit(data, epochs=epochs, batch_size=FIT_BATCH, optimizer=adam, seed=SEED, cluster=spread)
        finals.append((model.flat_params.copy(), history.train_loss, history.train_accuracy, adam))
    assert cluster.replaced == before + 1
    for params, losses, accuracies, adam in finals[1:]:  # (the cluster's workers count the right answers)
        assert np.array_equal(params, finals[0][0])
        assert losses == finals[0][1]
        assert accuracies == finals[0][2] and len(accuracies) == epochs
        # (each worker stepped its own run of the params: their moments, put together, are one process's)
        assert np.array_equal(adam._m, finals[0][3]._m) and np.array_equal(adam._v, finals[0][3]._v)
        assert adam._t == finals[0][3]._t == epochs * FIT_SAMPLES // FIT_BATCH
    assert not np.array_equal(finals[0][0], spadc.compile_file(example("mlp_digits.spad")).flat_params)


def _fit_run(model, data, cluster, **options) -> tuple:
    model.init_params(SEED)
    history = model.fit(data, seed=SEED, cluster=cluster, **options)
    return model.flat_params.copy(), history


def test_a_fit_whose_caller_looks_and_changes_the_optimiser_between_epochs_is_the_local_one(cluster):
    """Validation and on_epoch: the state comes back every epoch and no epoch is sent ahead (the
    callback halves the learning rate, which the next epoch must see)."""
    model = spadc.compile_file(example("mlp_digits.spad"))
    data, valid = _digits(FIT_SAMPLES), {k: v[FIT_SAMPLES:FIT_SAMPLES + 200] for k, v in _digits(1300).items()}
    runs = []
    for spread in (None, cluster):
        optimizer, seen = spadc.SGD(lr=0.1, momentum=0.9), []

        def halve(epoch, history, optimizer=optimizer, seen=seen):
            seen.append(model.flat_params.copy())  # the state after this very epoch
            optimizer.lr /= 2

        params, history = _fit_run(model, data, spread, epochs=3, batch_size=FIT_BATCH, optimizer=optimizer,
                                   validation=valid, on_epoch=halve, estimator=spadc.RAD(keep=0.5))
        runs.append((params, history.train_loss, history.val_loss, seen, optimizer._buffer.copy()))
    (params, losses, valid_losses, seen, momentum), there = runs
    assert np.array_equal(there[0], params) and there[1] == losses and there[2] == valid_losses
    assert all(np.array_equal(a, b) for a, b in zip(there[3], seen)) and len(seen) == 3
    assert np.array_equal(there[4], momentum)  # the optimiser's state came back too


def test_a_fit_stopped_by_a_loss_not_finite_on_the_cluster_stops_where_the_local_one_does(cluster):
    model = spadc.compile_source("input t: f64\nparam w: f64 = 1\nloss exp(w * t)", name="nan.spad")
    data = {"t": np.array([1.0, 2.0, 1000.0, 1.0, 0.5, 0.25])}  # a batch of 2: one chunk, worker 1 idle
    runs = []
    for spread in (None, cluster):
        with pytest.warns(spadrt.training.TrainingStopped, match="the loss became inf"):
            runs.append(_fit_run(model, data, spread, epochs=3, batch_size=2, optimizer=spadc.Adam(lr=1e-3)))
    (params, history), (there, there_history) = runs
    assert history.stopped == there_history.stopped and history.stopped is not None
    assert np.array_equal(there, params) and there_history.train_loss == history.train_loss == []


@pytest.mark.parametrize("epochs_per_call", [1, 2])
def test_an_interrupted_fit_on_the_cluster_holds_the_state_after_the_epoch_it_was_in(cluster, monkeypatch,
                                                                                     epochs_per_call):
    """Interrupted while it counts the second epoch's steps (the workers took it whole, and the
    third after it when one call holds both), a fit leaves the model as two epochs of the local run
    do: the workers take the second again from the state before it."""
    monkeypatch.setattr(cluster_training, "MAX_EPOCHS_PER_CALL", epochs_per_call)
    monkeypatch.setattr(cluster_training, "CALL_SECONDS", 1e9)  # (so each call after the first holds that many)
    model = spadc.compile_file(example("mlp_digits.spad"))
    data = _digits(FIT_SAMPLES)
    two_epochs, _ = _fit_run(model, data, None, epochs=2, batch_size=FIT_BATCH)
    calls, update = [0], spadrt.training._Progress.update

    def interrupting(self, *arguments):
        calls[0] += 1
        if calls[0] == FIT_SAMPLES // FIT_BATCH + 2:  # the second step of the second epoch
            raise KeyboardInterrupt
        return update(self, *arguments)

    monkeypatch.setattr(spadrt.training._Progress, "update", interrupting)
    with pytest.raises(spadrt.training.Interrupted) as interrupted:
        _fit_run(model, data, cluster, epochs=3, batch_size=FIT_BATCH)
    assert len(interrupted.value.history.train_loss) == 1
    assert np.array_equal(model.flat_params, two_epochs)


def test_a_run_time_error_in_a_workers_share_is_the_local_error_and_the_cluster_goes_on(cluster):
    model = spadc.compile_file(example("mlp_digits.spad"))
    data = _digits(FIT_SAMPLES)
    data["label"] = data["label"].copy()
    data["label"][FIT_SAMPLES - 1] = 10  # (out of range for 10 classes: on worker 1's share of some step)
    messages = []
    for spread in (None, cluster):
        with pytest.raises(spadc.SpadcError, match="out of range for 10 classes") as error:
            _fit_run(model, data, spread, epochs=2, batch_size=FIT_BATCH)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    # The workers' links, closed by the failed worker, are made again for the next fit
    here, there = (_fit_run(model, _digits(FIT_SAMPLES), spread, epochs=1, batch_size=FIT_BATCH)[0]
                   for spread in (None, cluster))
    assert np.array_equal(here, there)


def test_workers_that_cannot_reach_each_other_say_so(cluster, monkeypatch):
    """Each worker is told a port of its peer's host where nothing listens (as behind a firewall):
    linking fails for real, every worker still alive, and the fit says what the workers need."""
    results = DataParallel._results

    def misdirected(self, futures):
        got = results(self, futures)
        return [(host, 1) for host, _ in got] if got and isinstance(got[0], tuple) else got  # (port 1: closed)

    monkeypatch.setattr(DataParallel, "_results", misdirected)
    monkeypatch.setattr(cluster_training, "LINK_TIMEOUT", LINK_WAIT)  # (worker 0 waits for a call that fails)
    cluster.linked = False
    with pytest.raises(spadc.SpadcError, match=r"could not link to each other .* which the others must reach"):
        _fit_run(spadc.compile_file(example("mlp_digits.spad")), _digits(256), cluster, epochs=1, batch_size=128)
    monkeypatch.undo()
    model = spadc.compile_file(example("mlp_digits.spad"))
    assert np.array_equal(_fit_run(model, _digits(256), cluster, epochs=1, batch_size=128)[0],
                          _fit_run(model, _digits(256), None, epochs=1, batch_size=128)[0])


def test_two_threads_fit_on_one_cluster_at_once_each_as_alone(cluster):
    """Each epoch's calls wait on their peers: sent to every worker in the same order, they never
    wait on a peer busy with the other fit's."""
    import threading
    models = [spadc.compile_file(example("mlp_digits.spad")) for _ in range(2)]
    data = [_digits(FIT_SAMPLES), {k: v[::-1].copy() for k, v in _digits(FIT_SAMPLES).items()}]
    options = dict(epochs=3, batch_size=FIT_BATCH, optimizer="adam")
    here = [_fit_run(model, rows, None, **options)[0] for model, rows in zip(models, data)]
    there = [None, None]

    def fit(k):
        there[k] = _fit_run(models[k], data[k], cluster, **options)[0]

    threads = [threading.Thread(target=fit, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(np.array_equal(a, b) for a, b in zip(there, here))


def test_an_es_fit_on_the_cluster_steps_on_the_driver_and_is_the_local_one(cluster):
    """ES keeps the optimiser with the driver (each step's population is spread out, as `grad`'s)."""
    model = spadc.compile_file(example("es_digits.spad"))
    data, estimator = _digits(256), spadc.ES(sigma=0.1, particles=512)
    assert cluster.holding(data).trainer(model, estimator, spadc.Adam(), None) is None
    (here, history), (there, there_history) = (
        _fit_run(model, data, spread, epochs=2, batch_size=128, estimator=estimator) for spread in (None, cluster))
    assert np.array_equal(here, there) and history.train_loss == there_history.train_loss
    assert len(history.train_loss) == 2


def test_the_workers_count_a_data_sets_right_answers_as_one_process_does(cluster):
    from spadrt.training import accuracy
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.init_params(SEED)
    data = _digits(301)  # (shared out unevenly: 150 and 151 rows)
    model.fit(data, epochs=1, batch_size=64, seed=SEED, quiet=True)  # (somewhere between all wrong and all right)
    here = accuracy(model, data)
    assert 0.2 < here < 1.0
    assert cluster.holding(data).accuracy(model) == here
    # A fit's accuracy pass runs on the library its gradients use (every library has the forward kernel)
    rad = spadc.compile_file(example("mlp_digits.spad"))
    rad.fit(data, epochs=1, batch_size=128, seed=SEED, estimator=spadc.RAD(keep=0.5), cluster=cluster, quiet=True)
    assert len(cluster._keys[rad]) == 1


def test_a_worker_whose_layout_differs_is_refused(cluster):
    model = spadc.compile_file(example("mlp.spad"))
    model.library_digest = 12345  # what the driver expects; the workers load the real library
    with pytest.raises(spadc.SpadcError, match="layout digest is .* not the driver's 0x0000000000003039.*refused"):
        model.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64), cluster=cluster)


@pytest.mark.parametrize("estimator", [spadc.SPAD(keep=0.3), spadc.PES(particles=4)], ids=["spad", "pes"])
def test_estimators_with_driver_state_say_they_run_in_one_process(cluster, estimator):
    model = spadc.compile_file(example("mlp.spad"))
    with pytest.raises(spadc.SpadcError, match="runs in one process only"):
        model.grad(x=np.zeros((4, 64)), label=np.zeros(4, dtype=np.int64), estimator=estimator, cluster=cluster)


SWEEP_GRID = {"keep": [0.1, 0.3], "lr": [1e-3, 3e-3]}
SWEEP_SEEDS, SWEEP_EPOCHS, SWEEP_SAMPLES = 3, 2, 256


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_a_sweep_on_the_cluster_is_the_local_sweep_to_the_bit(cluster):
    data = _digits(SWEEP_SAMPLES)
    options = dict(estimator="rad", seeds=SWEEP_SEEDS, epochs=SWEEP_EPOCHS, validation_split=0.25)
    here = spadc.sweep(example("mlp_digits.spad"), data, SWEEP_GRID, **options)
    there = spadc.sweep(example("mlp_digits.spad"), data, SWEEP_GRID, cluster=cluster, **options)
    assert len(here) == 2 * 2 * SWEEP_SEEDS
    assert [(row["keep"], row["lr"], row["seed"]) for row in here] == [
        (keep, lr, seed) for keep in SWEEP_GRID["keep"] for lr in SWEEP_GRID["lr"] for seed in range(SWEEP_SEEDS)]
    assert repr(_without_times(there)) == repr(_without_times(here))  # repr: NaN (eval_train_loss) equals NaN
    assert len({row["train_loss"] for row in here}) == len(here)  # every run its own


@pytest.mark.parametrize("estimator, grid, source", [("spad", {"keep": [0.1, 0.3]}, "mlp_digits.spad"),
                                                     ("es", {"sigma": [0.05, 0.1]}, "es_digits.spad")])
def test_spad_and_es_runs_of_a_sweep_are_whole_on_one_worker_and_the_local_ones(cluster, estimator, grid, source):
    data = _digits(SWEEP_SAMPLES)
    options = dict(estimator=estimator, seeds=2, epochs=SWEEP_EPOCHS)  # no validation: its metrics are NaN
    here = spadc.sweep(example(source), data, grid, **options)
    there = spadc.sweep(example(source), data, grid, cluster=cluster, **options)
    assert np.isnan(here[0]["val_loss"])
    assert repr(_without_times(there)) == repr(_without_times(here))


def test_spadc_sweep_on_the_cluster_writes_its_table_and_plot(cluster, tmp_path):
    data = _digits(SWEEP_SAMPLES)
    np.savez(tmp_path / "train.npz", **data)
    cluster.close()  # the command's own spadc.Ray needs the CPUs (the fixture's workers restart when next used)
    result = run_cli("sweep", example("mlp_digits.spad"), "--data", str(tmp_path / "train.npz"), "--grid",
                     "keep=0.1,0.3", "--grid", "lr=1e-3,3e-3", "--estimator", "rad", "--seeds", str(SWEEP_SEEDS),
                     "--epochs", str(SWEEP_EPOCHS), "--ray", cluster.ray.get_runtime_context().gcs_address,
                     "--out", str(tmp_path / "sweep.csv"), "--plot", str(tmp_path / "sweep.png"))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert lines[0].startswith("keep,lr,seed,train_loss")
    assert len(lines) == 1 + 2 * 2 * SWEEP_SEEDS
    table = [line for line in result.stdout.splitlines() if line.startswith("| 0.")]
    assert len(table) == 4 and all(f"| {SWEEP_SEEDS} |" in line for line in table)
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SWEEP_STEPS = 30  # optimiser steps of each run of a model without inputs


def test_a_sweep_of_a_model_without_inputs_runs_fit_for_steps_here_and_on_the_cluster(cluster):
    path = example("rosenbrock.spad")
    options = dict(estimator="rad", seeds=2, steps=SWEEP_STEPS)
    here = spadc.sweep(path, None, {"N": [20], "keep": [0.3], "policy": ["products"]}, **options)
    with open(path) as f:  # (the file's name is the sites' random streams' too)
        model = spadc.compile_source(f.read().replace("const N = 10", "const N = 20"), name=path)
    for row in here:
        model.init_params(row["seed"])
        history = model.fit(None, steps=SWEEP_STEPS, estimator=spadc.RAD(keep=0.3, policy="products"),
                            seed=row["seed"], optimizer=spadc.Adam(), quiet=True)
        assert row["curve"] == history.train_loss and row["eval_train_loss"] == model.loss()
    assert here[0]["curve"] != here[1]["curve"]  # (one starting point: the seeds draw the paths)
    there = spadc.sweep(path, None, {"N": [20], "keep": [0.3], "policy": ["products"]}, cluster=cluster, **options)
    assert repr(_without_times(there)) == repr(_without_times(here))


@pytest.mark.parametrize("data, options, message", [
    (None, {}, r"trains for a number of steps: sweep\(path, None, grid, steps=N\)"),
    (None, {"steps": 3, "validation_split": 0.5}, "has no validation data"),
    ({"x": np.zeros((4, 64)), "label": np.zeros(4, dtype=np.int64)}, {"steps": 3},
     "steps= is for models without inputs"),
])
def test_a_sweep_says_when_steps_are_missing_or_meaningless(data, options, message):
    with pytest.raises(spadc.SpadcError, match=message):
        spadc.sweep(example("rosenbrock.spad"), data, {"lr": [0.01]}, **options)


def test_spadc_sweep_of_a_model_without_inputs_takes_steps_not_data(tmp_path):
    out = str(tmp_path / "sweep.csv")
    result = run_cli("sweep", example("rosenbrock.spad"), "--grid", "N=5,10", "--steps", "20", "--seeds", "2",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert [line.split(",")[:2] for line in open(out).read().splitlines()[1:]] == [
        ["5", "0"], ["5", "1"], ["10", "0"], ["10", "1"]]
    for extra, message in (([], "give each run's number of optimiser steps with --steps N"),
                           (["--steps", "3", "--data", out], "takes no data")):
        result = run_cli("sweep", example("rosenbrock.spad"), "--grid", "N=5", "--out", out, *extra)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_names_a_grid_key_that_configures_nothing():
    with pytest.raises(spadc.SpadcError, match="grid key 'sigma' configures nothing of a run with estimator 'rad'"):
        spadc.sweep(example("mlp_digits.spad"), _digits(8), {"sigma": [0.1]}, estimator="rad")


INTERRUPT_AFTER = 0.3  # seconds after the first checkpoint is written: some steps into the second epoch


def test_ctrl_c_of_a_training_on_the_cluster_leaves_the_last_checkpoint_whole(cluster, tmp_path):
    cluster.close()  # the command's own spadc.Ray needs the CPUs
    checkpoint = tmp_path / "params.npz"
    address = cluster.ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "spadc", "train", example("mlp_digits.spad"), "--data",
               example("data/digits_train.npz"), "--epochs", "500", "--ray", address, "--out", str(checkpoint),
               "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(INTERRUPT_AFTER)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.startswith("spadc train: interrupted at step") and stderr.strip().endswith(
        f"the last checkpoint is {checkpoint}"), stderr
    model = spadc.compile_file(example("mlp_digits.spad"))
    model.load(str(checkpoint))  # whole: every param, of its shape
    assert np.abs(model.flat_params).sum() > 0


def test_a_grid_key_naming_a_const_sets_it():
    data = _digits(64)
    rows = spadc.sweep(example("mlp_digits.spad"), data, {"P_DROP": [0.0, 0.5]}, seeds=1, epochs=1)
    plain = spadc.compile_file(example("mlp_digits.spad"))
    plain.init_params(0)
    history = plain.fit(data, epochs=1, seed=0)
    assert rows[0]["P_DROP"] == 0.0 and rows[0]["train_loss"] == history.train_loss[-1]
    assert rows[1]["train_loss"] != rows[0]["train_loss"]  # dropout on: another loss, from the same seed
