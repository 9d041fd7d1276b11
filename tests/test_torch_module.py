"""spadc inside PyTorch (spadc/torch.py): `torch.autograd.gradcheck` passes through the module on
three examples (and rejects a VJP off by a little), a `torch.optim` loop reaches `Model.fit`'s
params, mistakes are `SpadcError`s. Skipped without PyTorch (the optional extra `pip install
.[torch]`; CI installs it)."""

import numpy as np
import pytest

import spadc

from conftest import example, example_inputs, skew_vjp

torch = pytest.importorskip("torch", reason="spadc.torch needs PyTorch (optional extra: pip install .[torch])")
import spadc.torch  # noqa: E402

SEED = 17
FIT_RTOL = 1e-8  # a torch.optim SGD loop against Model.fit's: the same steps, sums in another order
CHECK_EXAMPLES = ("mlp.spad", "irnn.spad", "reaction_diffusion.spad")


def _layer(name, **options):
    model = spadc.compile_file(example(name), **options)
    model.init_params(seed=SEED)
    return spadc.torch.Module(model)


def _through_the_module(layer, inputs):
    """(a function of the params' and the float inputs' tensors, those tensors) for gradcheck."""
    floats = [k for k in inputs if k in layer.float_inputs]
    others = {k: v for k, v in inputs.items() if k not in layer.float_inputs}

    def f(*tensors):
        params = dict(zip((f"params.{n}" for n in layer.param_names), tensors))
        xs = dict(zip(floats, tensors[len(layer.param_names):]))
        out = torch.func.functional_call(layer, params, kwargs={**xs, **others})
        return (out.loss, *out.outputs.values())

    tensors = [layer.params[n].detach().clone().requires_grad_(True) for n in layer.param_names]
    tensors += [torch.tensor(inputs[k], dtype=torch.float64, requires_grad=True) for k in floats]
    return f, tuple(tensors)


@pytest.mark.parametrize("name", CHECK_EXAMPLES)
def test_gradcheck_passes_through_the_module(name):
    layer = _layer(name)
    inputs = example_inputs(layer.model.layout, np.random.default_rng(SEED), batch=2)
    f, tensors = _through_the_module(layer, inputs)
    assert torch.autograd.gradcheck(f, tensors, fast_mode=True)
    out = layer(**inputs)
    forward = layer.model.forward(**inputs)
    np.testing.assert_array_equal(out.loss.detach().numpy(), forward.loss)


def test_gradcheck_rejects_a_wrong_vjp(monkeypatch):
    # A negative control: cotangents 1% too large (gradcheck: 1e-5 absolute and 1e-3 relative).
    skew_vjp(monkeypatch, 1e-2)
    layer = _layer("mlp.spad")
    f, tensors = _through_the_module(layer, example_inputs(layer.model.layout, np.random.default_rng(SEED), batch=2))
    assert not torch.autograd.gradcheck(f, tensors, fast_mode=True, raise_exception=False)


@pytest.mark.parametrize("ours, theirs", [(lambda: spadc.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
                                          (lambda: spadc.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01))],
                         ids=["sgd", "adam"])
def test_a_torch_training_loop_reaches_fits_params(ours, theirs):
    layer = _layer("mlp.spad")
    rng = np.random.default_rng(SEED)
    data = {"x": rng.standard_normal((40, 64)), "label": rng.integers(0, 10, 40)}
    optimizer = theirs(layer.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        layer(**data).loss.mean().backward()
        optimizer.step()
    layer.model.fit(data, epochs=5, batch_size=40, optimizer=ours())  # full batches: five steps
    for name in layer.param_names:
        np.testing.assert_allclose(layer.params[name].detach().numpy(), layer.model.params[name], rtol=FIT_RTOL,
                                   atol=1e-12)


def test_one_sample_has_no_batch_axis():
    layer = _layer("mlp.spad")
    x = np.random.default_rng(SEED).standard_normal(64)
    out = layer(x=x, label=3)
    assert out.loss.shape == () and out.outputs["logits"].shape == (10,)
    assert out.loss.item() == layer.model.forward(x=x, label=3).loss
    out.loss.backward()
    _, expected = layer.model.grad(x=x, label=3)
    np.testing.assert_allclose(layer.params["W1"].grad.numpy(), expected["W1"], rtol=1e-12, atol=1e-15)


def test_an_f32_build_has_float32_params_and_converts_its_inputs():
    layer = _layer("mlp.spad", dtype="f32")
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    out = layer(x=np.zeros((2, 64)), label=[1, 2])  # float64 and a list: converted
    assert out.loss.dtype == torch.float32 and out.outputs["logits"].shape == (2, 10)


def test_bool_inputs_stay_bool_and_data_inputs_need_no_gradient():
    model = spadc.compile_source("input x: f64[3]\ninput keep: bool[3]\nparam w: f64[3] = 1.0\n"
                                 "loss sum(where(keep, w * x, 0.0))\n", name="masked.spad")
    layer = spadc.torch.Module(model)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64, requires_grad=True)
    out = layer(x=x, keep=torch.tensor([[True, False, True], [False, False, True]]))
    out.loss.sum().backward()
    # By hand: each sample's loss sums its kept x (w is ones); w's gradient sums the kept x over the
    # samples; x's gradient is w where kept.
    np.testing.assert_array_equal(out.loss.detach(), [4.0, 6.0])
    np.testing.assert_array_equal(layer.params["w"].grad, [1.0, 0.0, 9.0])
    np.testing.assert_array_equal(x.grad, [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])


def test_mistakes_are_spadc_errors():
    layer = _layer("mlp.spad")
    with pytest.raises(spadc.SpadcError, match="is on meta: spadc runs on the CPU"):
        layer(x=torch.zeros(64, device="meta"), label=1)
    with pytest.raises(spadc.SpadcError, match="unknown input `y`"):
        layer(x=torch.zeros(64), label=1, y=torch.zeros(1))


def test_params_moved_out_of_the_flat_buffer_still_give_the_models_values():
    # A call reads the module's flat buffer while every param is its view; a param given new
    # storage (or another dtype) is gathered instead.
    layer = _layer("mlp.spad")
    inputs = example_inputs(layer.model.layout, np.random.default_rng(SEED), batch=3)
    first = layer.param_names[0]
    moved = layer.params[first].detach().numpy() * 2.0
    layer.params[first].data = torch.tensor(moved)
    layer.model.params[first][...] = moved
    out = layer(**inputs)
    out.loss.sum().backward()
    np.testing.assert_array_equal(out.loss.detach().numpy(), layer.model.forward(**inputs).loss)
    _, grads = layer.model.grad(**inputs)
    np.testing.assert_allclose(layer.params[first].grad.numpy(), grads[first] * 3, rtol=1e-12, atol=1e-15)


def test_a_param_changed_in_place_before_backward_is_refused_by_autograd():
    layer = _layer("mlp.spad")
    out = layer(**example_inputs(layer.model.layout, np.random.default_rng(SEED), batch=2))
    with torch.no_grad():
        layer.params[layer.param_names[0]].add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.sum().backward()


def test_an_estimator_at_construction_or_per_call_draws_as_model_grad_does():
    # Call k is keyed by (seed, k): RAD's estimate through the module is Model.grad's with the same
    # seed and step (the same draws, on the VJP's surrogate and on the loss), and not the exact one.
    layer = _layer("mlp.spad")
    layer.estimator = spadc.RAD(keep=0.3)
    layer.seed = 9
    inputs = example_inputs(layer.model.layout, np.random.default_rng(SEED), batch=4)
    for step in range(2):
        layer.zero_grad()
        layer(**inputs).loss.mean().backward()
        _, expected = layer.model.grad(estimator=spadc.RAD(keep=0.3), seed=9, step=step, **inputs)
        for name in layer.param_names:
            np.testing.assert_allclose(layer.params[name].grad.numpy(), expected[name], rtol=1e-12, atol=1e-15)
    _, exact = layer.model.grad(**inputs)
    assert not np.allclose(layer.params["W1"].grad.numpy(), exact["W1"])
    layer.zero_grad()
    layer(estimator=None, **inputs).loss.mean().backward()  # this call exact
    np.testing.assert_allclose(layer.params["W1"].grad.numpy(), exact["W1"], rtol=1e-12, atol=1e-15)
    with pytest.raises(spadc.SpadcError, match="ES estimates the loss's gradient only"):
        spadc.torch.Module(layer.model, estimator=spadc.ES())


DROPPED = """input x: f64[8]
param w: f64[8] = 1.0
output z = dropout(w * x, 0.5)
loss sum(z)
"""


def test_dropout_follows_the_modules_training_mode():
    layer = spadc.torch.Module(spadc.compile_source(DROPPED, name="dropped.spad"), seed=3)
    x = np.random.default_rng(SEED).standard_normal((4, 8))
    trained = [layer(x=x).loss.detach().numpy() for _ in range(2)]  # calls 0 and 1, training mode
    for step in range(2):
        np.testing.assert_array_equal(trained[step], layer.model.forward(training=True, seed=3, step=step, x=x).loss)
    assert not np.array_equal(trained[0], trained[1])
    layer.eval()
    np.testing.assert_array_equal(layer(x=x).loss.detach().numpy(), layer.model.forward(x=x).loss)
