"""spadc inside PyTorch (INTERFACE.md; optional extra `spadc[torch]`, never imported by the core).

`Module(model)` is a `torch.nn.Module` over a compiled model: its params are `nn.Parameter`s (the
build's float type), and `layer(**inputs)` returns a `ModuleOutput` with `loss` (one per sample,
or a 0-d tensor for one sample) and `outputs` (the float outputs by name). Backward runs the
compiled VJP (`Model.vjp`, spadrt/derivatives.py) with respect to the params and to every float
input tensor that requires a gradient.

Invariants:
- Values are `Model.forward`'s at the module's params; gradients are `Model.vjp`'s.
- Tensors live on the CPU: one on another device is refused (`SpadcError`); float inputs are
  converted to the build's float type, integer inputs to int64.
- Exact reverse mode of order one (no estimator yet; `backward` is not differentiable again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spadrt import derivatives

from .errors import SpadcError

try:
    import torch
except ImportError as error:  # pragma: no cover (the extra is installed where this is tested)
    raise SpadcError(f"spadc.torch needs PyTorch ({error}): pip install 'spadc[torch]'") from None


@dataclass
class ModuleOutput:
    loss: "torch.Tensor"
    outputs: dict


class Module(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.float_type = torch.float64 if model.layout["dtype"] == "f64" else torch.float32
        self.param_names = [p["name"] for p in model.layout["params"]]
        self.params = torch.nn.ParameterDict({name: torch.nn.Parameter(torch.as_tensor(
            np.array(model.params[name]), dtype=self.float_type)) for name in self.param_names})
        self.float_inputs = {i["name"] for i in model.layout["inputs"] if i["dtype"] == "f64"}
        self.float_outputs = [o["name"] for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]

    def forward(self, **inputs) -> ModuleOutput:
        names, tensors = [], []
        for name, value in inputs.items():
            tensor = torch.as_tensor(value)
            if tensor.device.type != "cpu":
                raise SpadcError(f"input `{name}` is on {tensor.device}: spadc runs on the CPU (move it with .cpu())")
            tensor = tensor.to(self.float_type if name in self.float_inputs else torch.int64)
            names.append(name)
            tensors.append(tensor)
        for name in self.param_names:
            if self.params[name].device.type != "cpu":
                raise SpadcError(f"param `{name}` is on {self.params[name].device}: spadc runs on the CPU")
        results = _Apply.apply(self, tuple(names), *[self.params[name] for name in self.param_names], *tensors)
        return ModuleOutput(results[0], dict(zip(self.float_outputs, results[1:])))


def _host(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


class _Apply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, names, *tensors):
        count = len(layer.param_names)
        params = {name: _host(t) for name, t in zip(layer.param_names, tensors[:count])}
        inputs = {name: _host(t) for name, t in zip(names, tensors[count:])}
        result = layer.model.forward(params=params, inputs=inputs)
        ctx.layer, ctx.names, ctx.host = layer, names, (params, inputs)
        loss = torch.as_tensor(np.asarray(result.loss), dtype=layer.float_type)
        return (loss, *[torch.as_tensor(np.asarray(result.outputs[name]), dtype=layer.float_type)
                        for name in layer.float_outputs])

    @staticmethod
    def backward(ctx, loss_cotangent, *output_cotangents):
        layer, (params, inputs) = ctx.layer, ctx.host
        cotangents = {"loss": _host(loss_cotangent)}
        cotangents.update({name: _host(c) for name, c in zip(layer.float_outputs, output_cotangents) if c is not None})
        count = len(layer.param_names)
        wanted = ctx.needs_input_grad[2:]
        with_params, with_inputs = any(wanted[:count]), any(wanted[count:])
        # Only what autograd asks for: the params' cotangents alone are one gradient kernel's call.
        result = derivatives.vjp(layer.model, cotangents, with_params, params=params, training=False, seed=0, step=0,
                                 sample_offset=0, threads=None, state=None, inputs=inputs, keyword_inputs={},
                                 outputs=with_inputs)
        grads = [torch.as_tensor(np.asarray(result.params[name]), dtype=layer.float_type) if with_params else None
                 for name in layer.param_names]
        for name in ctx.names:
            found = result.inputs.get(name)
            grads.append(None if found is None else torch.as_tensor(np.asarray(found), dtype=layer.float_type))
        return (None, None, *grads)
