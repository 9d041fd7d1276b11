"""spadc inside PyTorch (INTERFACE.md; optional extra `spadc[torch]`, never imported by the core).

`Module(model, estimator=None, seed=0)` is a `torch.nn.Module` over a compiled model: its params
are `nn.Parameter`s (the build's float type), and `layer(**inputs)` (or `layer(inputs={...})`, for
an input named like the keyword `estimator`) returns a `ModuleOutput` with `loss` (one per sample,
or a 0-d tensor for one sample) and `outputs` (the float outputs by name). Backward runs the
compiled VJP (`Model.vjp`, spadrt/derivatives.py) with respect to the params and to every float
input tensor that requires a gradient; the params' cotangents are estimated by the module's
estimator (RAD or SPAD), or by `layer(..., estimator=...)`'s for one call.

Invariants:
- Values are `Model.forward`'s at the module's params; gradients are `Model.vjp`'s.
- The params are views of one flat tensor laid out as the kernels read them: while they are (an
  optimiser's in-place steps keep them so), a call passes that buffer as it is; a param given
  new storage is gathered instead. Inputs are checked once, in the forward pass, and the backward
  pass reuses them; autograd refuses a backward after a param was changed in place.
- Tensors live on the CPU: one on another device is refused (`SpadcError`); float inputs are
  converted to the build's float type, integer inputs to int64, bool inputs to bool.
- Call k (counted from 0: `layer.calls` says how many so far) is keyed by (`seed`, step k): RAD's draws and, in
  training mode (`layer.train()`, PyTorch's default), dropout's; in `layer.eval()` no dropout.
  SPAD keeps its own step counter, as in `Model.grad`.
- Reverse mode of order one: `backward` is not differentiable again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spadrt import derivatives
from spadrt.arguments import Options, check_seed, merge_inputs
from spadrt.calls import check_threads
from spadrt.es import ES, PES
from spadrt.estimators import SPAD, resolve

from .errors import SpadcError

try:
    import torch
except ImportError as error:  # pragma: no cover (the extra is installed where this is tested)
    raise SpadcError(f"spadc.torch needs PyTorch ({error}): pip install 'spadc[torch]'") from None


@dataclass
class ModuleOutput:
    loss: "torch.Tensor"
    outputs: dict


_UNSET = object()


class Module(torch.nn.Module):
    def __init__(self, model, estimator=None, seed: int = 0):
        super().__init__()
        self.model = model
        self.estimator = _checked_estimator(estimator)
        self.seed = check_seed(seed, "seed")
        self._calls = [0]  # (a list: nn.Module's attribute assignment costs microseconds a call)
        self.float_type = torch.float64 if model.layout["dtype"] == "f64" else torch.float32
        self.param_names = [p["name"] for p in model.layout["params"]]
        # The params are views of one flat tensor laid out as the kernels read them, so a call passes
        # that buffer as it is; an optimiser's in-place steps keep it so.
        self._flat = torch.from_numpy(model._flat.copy())
        self._flat_host = self._flat.numpy()
        self.params = torch.nn.ParameterDict({p["name"]: torch.nn.Parameter(
            self._flat[p["offset"]:p["offset"] + p["size"]].view(p["shape"])) for p in model.layout["params"]})
        self._addresses = [self._flat_host.ctypes.data + p["offset"] * self._flat.element_size()
                           for p in model.layout["params"]]
        self.float_inputs = {i["name"] for i in model.layout["inputs"] if i["dtype"] == "f64"}
        self._input_types = {i["name"]: {"f64": self.float_type, "bool": torch.bool}.get(i["dtype"], torch.int64)
                             for i in model.layout["inputs"]}
        self.float_outputs = [o["name"] for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]
        self._output_index = {o["name"]: k for k, o in enumerate(model.layout["outputs"])}
        # The params as a call reads them: from the ParameterDict's own table (where
        # torch.func.functional_call puts its tensors), without nn.Module's attribute lookups.
        self._param_table = self.params._parameters
        self._param_keys = [self.params._key_to_attr(name) for name in self.param_names]
        self._threads = None  # every core, as the core's calls

    def forward(self, *, estimator=_UNSET, inputs: dict | None = None, **keyword_inputs) -> ModuleOutput:
        estimator = self.estimator if estimator is _UNSET else _checked_estimator(estimator)
        options = Options(int(self.training), self.seed, self._calls[0], 0)
        self._calls[0] += 1
        # Inputs that take a gradient are autograd's arguments; the others ride along with the options
        # (each argument of a custom op costs autograd time, and most inputs are data).
        plain, names, tensors = {}, [], []
        for name, value in merge_inputs(inputs, keyword_inputs).items():
            tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            if not tensor.is_cpu:
                raise SpadcError(f"input `{name}` is on {tensor.device}: spadc runs on the CPU (move it with .cpu())")
            wanted = self._input_types.get(name, tensor.dtype)  # (an unknown name: the call refuses it)
            tensor = tensor if tensor.dtype == wanted else tensor.to(wanted)
            if tensor.requires_grad:
                names.append(name)
                tensors.append(tensor)
            else:
                plain[name] = tensor.numpy()
        params = [self._param_table[key] for key in self._param_keys]
        results = _Apply.apply(self, (plain, tuple(names), estimator, options), *params, *tensors)
        return ModuleOutput(results[0], dict(zip(self.float_outputs, results[1:])))

    @property
    def calls(self) -> int:
        """Calls so far: call k's draws and dropout are keyed by (`seed`, step k)."""
        return self._calls[0]

    def _flat_params(self, params) -> np.ndarray:
        """The params as the kernels' flat buffer: the module's own while every param is still its view
        (else gathered, converted to the build's type)."""
        if all(p.data_ptr() == address for p, address in zip(params, self._addresses)):
            return self._flat_host
        for name, p in zip(self.param_names, params):
            if p.device.type != "cpu":
                raise SpadcError(f"param `{name}` is on {p.device}: spadc runs on the CPU")
        return torch.cat([p.detach().reshape(-1) for p in params]).to(self.float_type).numpy()


def _host(tensor) -> np.ndarray:
    return tensor.detach().numpy() if tensor.requires_grad else tensor.numpy()


def _checked_estimator(estimator):
    estimator = resolve(estimator)
    if isinstance(estimator, (ES, PES)):
        raise SpadcError(f"{type(estimator).__name__} estimates the loss's gradient only, from forward passes: "
                         "spadc.torch.Module's backward takes the exact reverse sweep, RAD or SPAD")
    return estimator


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, call, *tensors):
        plain, names, estimator, options = call
        count = len(layer.param_names)
        params = tensors[:count]
        flat = layer._flat_params(params)
        model = layer.model
        prepared = model._inputs(dict(plain, **{name: _host(t) for name, t in zip(names, tensors[count:])}))
        threads = check_threads(layer._threads)
        losses, outputs = model._forward_arrays(prepared, flat, options, threads)
        # Saved so that autograd refuses a backward after the params were changed in place.
        ctx.save_for_backward(*params)
        ctx.set_materialize_grads(False)
        ctx.layer, ctx.names, ctx.call = layer, names, (prepared, flat, threads, estimator, options)
        one = (lambda a: a) if prepared.batched else (lambda a: a.reshape(a.shape[1:]))  # one sample: no batch axis
        return (torch.from_numpy(one(losses)),
                *[torch.from_numpy(one(outputs[layer._output_index[name]])) for name in layer.float_outputs])

    @staticmethod
    def backward(ctx, loss_cotangent, *output_cotangents):
        ctx.saved_tensors  # noqa: B018 (autograd's check that no param changed since the forward pass)
        layer, (prepared, flat, threads, estimator, options) = ctx.layer, ctx.call
        cotangents = {} if loss_cotangent is None else {"loss": _host(loss_cotangent)}
        cotangents.update({name: _host(c) for name, c in zip(layer.float_outputs, output_cotangents) if c is not None})
        count = len(layer.param_names)
        if not cotangents:
            return (None, None) + (None,) * (len(ctx.needs_input_grad) - 2)
        wanted = ctx.needs_input_grad[2:]
        with_params, with_inputs = any(wanted[:count]), any(wanted[count:])
        # Only what autograd asks for: the params' cotangents alone are one gradient kernel's call.
        step = None if isinstance(estimator, SPAD) else options.step  # SPAD counts its own steps
        result = derivatives.vjp_prepared(layer.model, cotangents, with_params, prepared, flat, options, threads,
                                          outputs=with_inputs, estimator=estimator, step=step)
        grads = [_tensor(result.params[name], layer.float_type) if with_params else None for name in layer.param_names]
        for name in ctx.names:
            found = result.inputs.get(name)
            grads.append(None if found is None else _tensor(found, layer.float_type))
        return (None, None, *grads)


def _tensor(array: np.ndarray, float_type) -> "torch.Tensor":
    tensor = torch.from_numpy(np.asarray(array))
    return tensor if tensor.dtype == float_type else tensor.to(float_type)
