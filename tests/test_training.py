"""Training: optimiser updates against values worked out by hand, schedules, `fit` (accuracy on the
bundled digits, reproducibility, bounds, a non-finite loss) and `spadc train`."""

import io
import math
import os
import sys
import time

import numpy as np
import pytest

import spadc
import spadrt.training

import isolated
from conftest import EXAMPLES, example, quick, run_cli

DATA = os.path.join(EXAMPLES, "data")
RTOL = 1e-15  # one optimiser step against its hand-worked value
TARGET_ACCURACY = 0.95
TIME_LIMIT = 60.0  # seconds for the digits MLP to reach the target with exact gradients


def digits(split):
    with np.load(os.path.join(DATA, f"digits_{split}.npz")) as data:
        return {name: data[name] for name in data.files}


# ---- optimisers: one or two steps by hand ------------------------------------------------------

P0, G0, G1 = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-0.5, 1.0])


def steps(optimizer, *grads, lr=None):
    p = P0.copy()
    for g in grads:
        optimizer.step(p, g, optimizer.lr if lr is None else lr)
    return p


def test_sgd_plain_momentum_nesterov_weight_decay():
    assert np.allclose(steps(spadc.SGD(lr=0.1), G0), [0.95, -2.025], rtol=RTOL)
    # momentum 0.9: buffer = g0, then 0.9 g0 + g1 = [-0.05, 1.225]
    assert np.allclose(steps(spadc.SGD(lr=0.1, momentum=0.9), G0, G1), [0.955, -2.1475], rtol=RTOL)
    # nesterov: step with g + 0.9 buffer: first [0.95, 0.475], then g1 + 0.9 [-0.05, 1.225] = [-0.545, 2.1025]
    assert np.allclose(steps(spadc.SGD(lr=0.1, momentum=0.9, nesterov=True), G0, G1), [0.9595, -2.25775], rtol=RTOL)
    # weight decay 0.1: g + 0.1 p = [0.6, 0.05]
    assert np.allclose(steps(spadc.SGD(lr=0.1, weight_decay=0.1), G0), [0.94, -2.005], rtol=RTOL)


def test_adam_first_step_moves_every_coordinate_by_about_lr():
    # After one step m_hat = g and v_hat = g^2, so the step is lr g / (|g| + eps).
    expected = P0 - 0.01 * G0 / (np.abs(G0) + 1e-8)
    assert np.allclose(steps(spadc.Adam(lr=0.01), G0), expected, rtol=RTOL)


def test_adam_second_step_by_hand():
    b1, b2, lr, eps = 0.9, 0.999, 0.01, 1e-8
    m1, v1 = (1 - b1) * G0, (1 - b2) * G0 ** 2
    p1 = P0 - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
    m2, v2 = b1 * m1 + (1 - b1) * G1, b2 * v1 + (1 - b2) * G1 ** 2
    p2 = p1 - lr * (m2 / (1 - b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
    assert np.allclose(steps(spadc.Adam(lr=lr), G0, G1), p2, rtol=1e-13)


def test_adamw_decays_the_weights_before_the_adam_step():
    expected = P0 * (1 - 0.01 * 0.1) - 0.01 * G0 / (np.abs(G0) + 1e-8)
    assert np.allclose(steps(spadc.AdamW(lr=0.01, weight_decay=0.1), G0), expected, rtol=RTOL)
    l2 = steps(spadc.Adam(lr=0.01, weight_decay=0.1), G0)  # Adam's weight decay is L2 on the gradient
    g = G0 + 0.1 * P0
    assert np.allclose(l2, P0 - 0.01 * g / (np.abs(g) + 1e-8), rtol=RTOL)


def test_adagrad_two_steps_by_hand():
    p1 = P0 - 0.1 * G0 / (np.sqrt(G0 ** 2) + 1e-10)
    p2 = p1 - 0.1 * G1 / (np.sqrt(G0 ** 2 + G1 ** 2) + 1e-10)
    assert np.allclose(steps(spadc.Adagrad(lr=0.1), G0, G1), p2, rtol=RTOL)


TORCH_OPTIMIZERS = [  # (ours, PyTorch's class name and settings)
    (spadc.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01})),
    (spadc.Adam(lr=0.01, weight_decay=0.1), ("Adam", {"lr": 0.01, "weight_decay": 0.1})),
    (spadc.AdamW(lr=0.01), ("AdamW", {"lr": 0.01})),
    (spadc.Adagrad(lr=0.1), ("Adagrad", {"lr": 0.1})),
]


def _torch_steps(settings, gradients):
    """Where each PyTorch optimizer takes P0 by these gradients (in a child process: tests/isolated.py)."""
    import torch
    ends = []
    for name, options in settings:
        parameter = torch.tensor(P0.copy(), requires_grad=True)
        optimizer = getattr(torch.optim, name)([parameter], **options)
        for g in gradients:
            parameter.grad = torch.tensor(g)
            optimizer.step()
        ends.append(parameter.detach().numpy().copy())
    return ends


def test_optimizers_match_pytorch_when_it_is_installed():
    isolated.require("torch", "PyTorch is the oracle of the optimizers' steps")
    theirs = isolated.in_child(_torch_steps, [settings for _, settings in TORCH_OPTIMIZERS], [G0, G1, G0])
    for (ours, _), end in zip(TORCH_OPTIMIZERS, theirs):
        np.testing.assert_allclose(steps(ours, G0, G1, G0), end, rtol=1e-14)


def test_schedules():
    assert [spadc.StepLR(step_size=2, gamma=0.5)(0.1, 0, e, 6) for e in range(5)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    cosine = spadc.CosineLR()
    assert cosine(0.1, 0, 0, 10) == 0.1 and abs(cosine(0.1, 0, 5, 10) - 0.05) < 1e-15 and cosine(0.1, 0, 10, 10) == 0


def test_bad_optimizer_settings_are_errors():
    for make, message in [(lambda: spadc.SGD(lr=-1), "lr must be positive"),
                          (lambda: spadc.SGD(lr=0.1, nesterov=True), "nesterov"),
                          (lambda: spadc.Adam(betas=(1.0, 0.9)), "betas")]:
        with pytest.raises(spadc.SpadcError, match=message):
            make()


# ---- fit ----------------------------------------------------------------------------------------

def test_the_digits_mlp_reaches_the_target_accuracy_within_the_time_limit():
    model = spadc.compile_file(example("mlp_digits.spad"))
    start = time.perf_counter()
    history = model.fit(digits("train"), epochs=20, batch_size=32, optimizer=spadc.Adam(lr=1e-3),
                        validation=digits("test"), seed=0)
    assert time.perf_counter() - start < TIME_LIMIT  # generous: it takes a few seconds
    assert history.val_accuracy[-1] >= TARGET_ACCURACY
    assert history.train_loss[-1] < history.train_loss[0] and len(history.val_loss) == 20
    assert history.steps == 20 * math.ceil(1437 / 32)


@pytest.mark.parametrize("estimator", quick([spadc.RAD(keep=0.1), spadc.SPAD(keep=0.1)], [spadc.RAD(keep=0.1)]),
                         ids=repr)  # (quick: RAD; the command line trains with SPAD)
def test_fit_trains_with_sampled_gradients(estimator):
    model = spadc.compile_file(example("mlp_digits.spad"))
    history = model.fit(digits("train"), epochs=3, optimizer=spadc.Adam(lr=1e-3), estimator=estimator,
                        validation=digits("test"))
    assert history.val_accuracy[-1] > 0.85
    if isinstance(estimator, spadc.SPAD):
        assert estimator.step == history.steps  # its counter advanced once per training step


def test_fit_is_reproducible():
    def train(seed):
        model = spadc.compile_file(example("mlp.spad"))
        model.init_params(seed=1)
        data = digits("test")
        model.fit(data, epochs=2, batch_size=16, estimator=spadc.RAD(keep=0.3), seed=seed)
        return model.flat_params.copy()
    first, second, other = train(0), train(0), train(1)
    assert np.array_equal(first, second) and not np.array_equal(first, other)


def test_fit_keeps_parameters_in_their_bounds():
    model = spadc.compile_source("input t: f64\nparam w: f64 in [-0.5, 0.5] = 0\nloss (w - t)^2", name="b.spad")
    model.fit({"t": np.full(8, 3.0)}, epochs=50, batch_size=4, optimizer=spadc.SGD(lr=0.5))
    assert model.params["w"] == 0.5


def test_a_non_finite_loss_stops_training_and_names_the_step():
    model = spadc.compile_source("input t: f64\nparam w: f64 = 1\nloss exp(w * t)", name="nan.spad")
    with pytest.warns(spadrt.training.TrainingStopped, match="at step 2"):
        history = model.fit({"t": np.array([1.0, 2.0, 1000.0, 1.0])}, epochs=3, batch_size=1,
                            optimizer=spadc.SGD(lr=1e-3))
    assert history.stopped is not None and "at step 2 (epoch 1, minibatch 3)" in history.stopped
    assert "inf" in history.stopped and len(history.train_loss) == 0


def test_fit_checks_its_data():
    model = spadc.compile_file(example("mlp.spad"))
    with pytest.raises(spadc.SpadcError, match="has no array `label`"):
        model.fit({"x": np.zeros((4, 64))})
    with pytest.raises(spadc.SpadcError, match="different numbers of samples"):
        model.fit({"x": np.zeros((4, 64)), "label": np.zeros(3, dtype=int)})
    with pytest.raises(spadc.SpadcError, match="epochs must be a positive integer"):
        model.fit(digits("test"), epochs=0)


# ---- spadc train -----------------------------------------------------------------------------------

@pytest.mark.parametrize("estimator", quick(["rad", "spad"], ["spad"]))  # (SPAD's state makes the harder case)
def test_spadc_train_with_validation_checkpoint_and_plot(tmp_path, estimator):
    out, plot = tmp_path / "p.npz", tmp_path / "curve.png"
    result = run_cli("train", example("mlp_digits.spad"), "--data", os.path.join(DATA, "digits_train.npz"), "--val",
                     os.path.join(DATA, "digits_test.npz"), "--epochs", "4", "--estimator", estimator,
                     "--keep", "0.3", "--out", str(out), "--plot", str(plot), "--quiet")
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("validation accuracy ")[1].split("%")[0])
    assert accuracy > 85 and result.stderr == ""
    with np.load(out) as params:
        assert set(params.files) == {"W1", "b1", "W2", "b2", "W3", "b3"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spadc_train_with_a_validation_split_and_a_bad_file(tmp_path):
    result = run_cli("train", example("mlp.spad"), "--data", os.path.join(DATA, "digits_test.npz"),
                     "--val-split", "0.25", "--epochs", "1", "--quiet")
    assert result.returncode == 0 and "validation accuracy" in result.stdout
    result = run_cli("train", example("mlp.spad"), "--data", str(tmp_path / "none.npz"))
    assert result.returncode == 1 and "cannot read data" in result.stderr


@pytest.mark.filterwarnings("ignore::spadrt.estimators.SamplingWarning")
def test_experiment_runs_are_reproducible(monkeypatch):
    """The experiments' tables are functions of their seeds: a run repeated gives the same bits."""
    sys.path.insert(0, os.path.dirname(EXAMPLES))  # the checkout's bench/ (spadc itself is already imported)
    from bench import experiments
    monkeypatch.setattr(experiments, "DIMENSIONS", (20,))
    monkeypatch.setattr(experiments, "OPTIMISATION_SEEDS", range(2))
    monkeypatch.setattr(experiments, "OPTIMISATION_STEPS", 100)
    for estimator, grid in (("rad", {"keep": [0.3], "policy": ["products"]}),
                            ("spad", {"keep": [0.3], "sites": ["products"]})):
        first, again = (experiments.minimised(example("rosenbrock.spad"), 0.01, estimator, grid)[20] for _ in range(2))
        for (final, curve), (final_again, curve_again) in zip(first, again):
            assert final == final_again and np.array_equal(curve, curve_again) and curve[-1] == final
        assert first[0][0] != first[1][0]  # (Rosenbrock starts at one point: the seed draws the paths)
    from bench import memory
    data = memory.digit_rows("test")
    assert data["seq"].shape == (len(data["label"]), 28, 28) and 0.0 <= data["seq"].min() and data["seq"].max() <= 1.0


def test_a_model_without_inputs_fits_for_steps():
    model = spadc.compile_file(example("rosenbrock.spad"))
    start = model.loss()
    history = model.fit(None, steps=50, optimizer=spadc.Adam(lr=0.01))
    assert history.steps == 50 and len(history.train_loss) == 50 and model.loss() < start
    with pytest.raises(spadc.SpadcError, match=r"fit\(None, steps=N\)"):
        model.fit(None)
    mlp = spadc.compile_file(example("mlp.spad"))
    with pytest.raises(spadc.SpadcError, match="the model has inputs"):
        mlp.fit(None, steps=3)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    model = spadc.compile_file(example("rosenbrock.spad"))
    plain, terminal = io.StringIO(), _Terminal()
    model.fit(None, steps=30, quiet=False, stream=plain)
    assert "\r" not in plain.getvalue()
    mlp = spadc.compile_file(example("mlp.spad"))
    data = {"x": np.random.default_rng(0).standard_normal((64, 64)), "label": np.arange(64) % 10}
    mlp.fit(data, epochs=2, batch_size=8, quiet=False, stream=plain)
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue() and [line.split()[1] for line in lines if line.startswith("epoch")] == ["1/2", "2/2"]
    pytest.importorskip("tqdm")
    mlp.fit(data, epochs=1, batch_size=8, quiet=False, stream=terminal)
    shown = terminal.getvalue()
    assert "\r" in shown and "100%" in shown and "loss" in shown  # a tqdm bar, redrawn in place
    assert shown.rstrip().splitlines()[-1].split("\r")[-1].startswith("epoch 1/1  train loss")


def test_plots_need_matplotlib_and_a_known_file_type(tmp_path, monkeypatch):
    from spadrt import plot
    with pytest.raises(spadc.SpadcError, match="name a .png, .pdf or .svg file"):
        plot.require_matplotlib(str(tmp_path / "curve.npz"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(spadc.SpadcError, match=r'pip install "spadc\[plot\]"'):
        plot.require_matplotlib(str(tmp_path / "curve.png"))


def test_a_loss_curve_is_a_png_with_the_series(tmp_path):
    pytest.importorskip("matplotlib")
    from spadrt.plot import loss_curve
    path = tmp_path / "c.svg"
    loss_curve(str(path), {"train": [3.0, 1.0, 0.1, 0.01], "val": [3.1, 1.2, 0.3, 0.2]})
    text = path.read_text()
    assert "<svg" in text and "train" in text and "val" in text and "epoch" in text


# ---- what fit says (issue 29) --------------------------------------------------------------------

def test_fit_checks_its_arguments_at_the_call():
    model = spadc.compile_file(example("rosenbrock.spad"))
    for bad, name in ((spadc.Adam, "optimizer"), (spadc.RAD, "estimator"), (spadc.precondition.KFAC, "precondition")):
        with pytest.raises(spadc.SpadcError, match=f"{name}= got the class {bad.__name__}: give an instance"):
            model.fit(None, steps=3, **{name: bad})


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # p = 1e308 + 1e308, on purpose
def test_a_non_finite_loss_stops_training_with_a_warning_naming_the_step():
    model = spadc.compile_source("param p: f64 = 1.0\nloss -p\n", name="blowup.spad")
    with pytest.warns(spadrt.training.TrainingStopped, match=r"the loss became -inf at step 2;"):
        history = model.fit(None, steps=50, optimizer=spadc.SGD(lr=1e308))  # p: 1, 1e308, inf
    assert history.stopped and history.steps == 2 and len(history.train_loss) == 2


def test_divergence_is_warned_about_once():
    """SGD with too large a step on a quadratic: the loss grows by 81x per step (|1 - 2 lr| = 9)."""
    model = spadc.compile_source("param p: f64 = 1.0\nloss p * p\n", name="quadratic.spad")
    with pytest.warns(spadrt.training.Diverging, match="training is diverging") as caught:
        model.fit(None, steps=20, optimizer=spadc.SGD(lr=5.0))
    assert len([w for w in caught if issubclass(w.category, spadrt.training.Diverging)]) == 1
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_params({"p": np.array(1.0)})
        model.fit(None, steps=20, optimizer=spadc.SGD(lr=0.1))  # converging: no warning


def test_validation_split_in_python_as_on_the_command_line():
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(0)
    data = digits("test")
    history = model.fit(data, epochs=1, validation_split=0.25, seed=3)
    assert len(history.val_loss) == 1 and len(history.val_accuracy) == 1
    with pytest.raises(spadc.SpadcError, match="validation_split must be a share in"):
        model.fit(data, epochs=1, validation_split=1.5)
    with pytest.raises(spadc.SpadcError, match="not both"):
        model.fit(data, epochs=1, validation_split=0.2, validation=data)


MSE_CLASSIFIER = """input x: f64[64]
input label: i64
param W: f64[10, 64] ~ normal(0, 0.05)
param b: f64[10]
let scores = sigmoid(W @ x + b)
loss mse(scores, onehot(label, 10))
"""


def test_accuracy_is_reported_for_an_mse_classifier_against_onehot_labels():
    """The documented rule: cross_entropy(logits, label), or mse(scores, onehot(label, n)), whole as
    the loss; accuracy is argmax(scores) == label. The oracle: the scores recomputed in NumPy (the
    compiled scores once came from a buffer the loss had overwritten)."""
    model = spadc.compile_source(MSE_CLASSIFIER, name="mse_classifier.spad")
    assert model.layout["classifier"] == {"logits": "_logits", "label": "label", "loss": "mse"}
    model.init_params(0)
    train, test = digits("train"), digits("test")
    history = model.fit(train, epochs=2, optimizer=spadc.Adam(lr=1e-2), validation=test)
    scores = 1 / (1 + np.exp(-(test["x"] @ model.params["W"].T + model.params["b"])))
    assert history.val_accuracy[-1] == np.mean(np.argmax(scores, axis=1) == test["label"]) > 0.5
    assert len(history.train_accuracy) == 2
    not_a_classifier = spadc.compile_source(MSE_CLASSIFIER.replace("onehot(label, 10)", "ones(10) * float(label)"),
                                            name="regression.spad")
    assert not_a_classifier.layout["classifier"] is None
    with pytest.raises(spadc.SpadcError, match="accuracy needs a classifier"):
        spadrt.training.accuracy(not_a_classifier, test)


def test_the_mc_fisher_needs_a_softmax_classifier():
    model = spadc.compile_source(MSE_CLASSIFIER, name="mse_classifier.spad")
    with pytest.raises(spadc.SpadcError, match="draws labels from the model's softmax"):
        spadc.curvature.taps(model, fisher="mc", **{k: v[:4] for k, v in digits("test").items()})
