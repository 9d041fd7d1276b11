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
from spadc.cluster_training import DataParallel

from conftest import example, run_cli

SEED = 5
OBJECT_STORE = 80 << 20  # bytes per node: Ray's smallest is 75 MB
FIT_SAMPLES, FIT_BATCH, FIT_EPOCHS = 1024, 256, 2  # 4 steps an epoch, each of 2 chunks
ES_PARTICLES = 4096


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
    finals = []
    for spread in (None, cluster, cluster):
        if len(finals) == 2:  # the third run loses a worker in the middle of its first epoch
            # (the workers linked by the last fit, this one waits first for its first epoch, all sent)
            _kill_a_worker_on_call(monkeypatch, cluster, 1, (DataParallel, "_results"))
            before = cluster.replaced
        model.init_params(SEED)
        history = model.fit(data, epochs=FIT_EPOCHS, batch_size=FIT_BATCH, optimizer=spadc.Adam(lr=1e-3),
                            seed=SEED, cluster=spread)
        finals.append((model.flat_params.copy(), history.train_loss, history.train_accuracy))
    assert cluster.replaced == before + 1
    for params, losses, accuracies in finals[1:]:  # (the cluster's workers count the right answers)
        assert np.array_equal(params, finals[0][0])
        assert losses == finals[0][1]
        assert accuracies == finals[0][2] and len(accuracies) == FIT_EPOCHS
    assert not np.array_equal(finals[0][0], spadc.compile_file(example("mlp_digits.spad")).flat_params)


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
