"""spadc inside JAX (INTERFACE.md; optional extra `spadc[jax]`, never imported by the core).

`function(model)` is `f(params, **inputs) -> (losses, outputs)`, a JAX function over the compiled
kernels: `params` a dict by param name, the inputs as the model's `forward` takes them (one sample
or a batch), `losses` one per sample, `outputs` the model's float outputs by name. Its derivative is
`jax.custom_vjp` over `Model.vjp` (spadrt/derivatives.py), so `jax.grad`, `jax.vjp` and `jax.jit`
work through it, with respect to the params and the float inputs; `jax.vmap` maps the model over
the mapped axis one call at a time. The kernels run through `jax.pure_callback` on the host.

Invariants:
- Values are those of `Model.forward` and `Model.vjp` at the same params and inputs, in the build's
  float type (float64 needs `jax_enable_x64`; without it, an f64 build is refused).
- Integer and boolean inputs are not differentiated (their cotangents are float0 zeros).
- Reverse mode of order two: the VJP is itself a `custom_vjp`, whose VJP is forward mode over the
  VJP kernel (one more callback, not differentiable again).
"""

from __future__ import annotations

import numpy as np

from spadrt import derivatives

from .errors import SpadcError

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:  # pragma: no cover (the extra is installed where this is tested)
    raise SpadcError(f"spadc.jax needs JAX ({error}): pip install 'spadc[jax]'") from None


def function(model):
    """`f(params, **inputs) -> (losses, outputs)` over `model`'s kernels (see the module's docstring)."""
    float_type = np.float64 if model.layout["dtype"] == "f64" else np.float32
    if float_type is np.float64 and not jax.config.jax_enable_x64:
        raise SpadcError("an f64 model in JAX needs 64-bit floats: jax.config.update('jax_enable_x64', True) "
                         "(or compile the model with dtype='f32')")
    params_spec = {p["name"]: tuple(p["shape"]) for p in model.layout["params"]}
    inputs_spec = {i["name"]: i for i in model.layout["inputs"] if not i.get("state")}
    float_outputs = [o for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]
    differentiable_inputs = {name for name, spec in inputs_spec.items() if spec["dtype"] == "f64"}

    def batch_of(inputs) -> tuple:
        for name, value in inputs.items():
            if name in inputs_spec and np.ndim(value) == len(inputs_spec[name]["shape"]) + 1:
                return (np.shape(value)[0],)
        return ()

    def host(x):
        return np.asarray(x)

    def forward_on_host(params, inputs):
        result = model.forward(params={k: host(v) for k, v in params.items()},
                               inputs={k: host(v) for k, v in inputs.items()})
        losses = np.asarray(result.loss, dtype=float_type)
        return losses, {o["name"]: np.asarray(result.outputs[o["name"]], dtype=float_type) for o in float_outputs}

    def result_shapes(inputs):
        lead = batch_of(inputs)
        return (jax.ShapeDtypeStruct(lead, float_type),
                {o["name"]: jax.ShapeDtypeStruct(lead + tuple(o["shape"]), float_type) for o in float_outputs})

    def call(params, inputs):
        return jax.pure_callback(forward_on_host, result_shapes(inputs), params, inputs, vmap_method="sequential")

    @jax.custom_vjp
    def f(params, inputs):
        return call(params, inputs)

    def f_forward(params, inputs):  # f itself, not its callback: an outer differentiation sees f's rule
        return f(params, inputs), (params, inputs)

    def host_inputs(params, inputs):
        return dict(params={k: host(v) for k, v in params.items()}, training=False, seed=0, step=0, sample_offset=0,
                    threads=None, state=None, inputs={k: host(v) for k, v in inputs.items()}, keyword_inputs={})

    def host_cotangents(loss_cotangent, output_cotangents):
        cotangents = {"loss": host(loss_cotangent)}
        cotangents.update({k: host(v) for k, v in output_cotangents.items()})
        return cotangents

    def vjp_on_host(params, inputs, loss_cotangent, output_cotangents):
        result = derivatives.vjp(model, host_cotangents(loss_cotangent, output_cotangents), True,
                                 outputs=bool(differentiable_inputs), **host_inputs(params, inputs))
        params_bar = {k: np.asarray(result.params[k], dtype=float_type).reshape(params_spec[k]) for k in params}
        inputs_bar = {k: np.asarray(result.inputs[k], dtype=float_type) for k in inputs if k in result.inputs}
        return params_bar, inputs_bar

    def float_shapes(tree):
        return {k: jax.ShapeDtypeStruct(np.shape(v), float_type) for k, v in tree.items()}

    def differentiable_of(inputs):
        return {k: v for k, v in inputs.items() if k in differentiable_inputs}

    def zeros_for_the_others(inputs, bars):
        """Integer and boolean inputs get float0 cotangents: they are not differentiated."""
        return {**bars, **{k: np.zeros(np.shape(v), dtype=jax.dtypes.float0) for k, v in inputs.items()
                           if k not in differentiable_inputs}}

    # The VJP is a custom_vjp too, whose own VJP is forward mode over the VJP kernel
    # (derivatives.second_order): reverse mode of order two.
    @jax.custom_vjp
    def vjp(params, inputs, loss_cotangent, output_cotangents):
        shapes = (float_shapes(params), float_shapes(differentiable_of(inputs)))
        return jax.pure_callback(vjp_on_host, shapes, params, inputs, loss_cotangent, output_cotangents,
                                 vmap_method="sequential")

    def vjp_forward(params, inputs, loss_cotangent, output_cotangents):
        return vjp(params, inputs, loss_cotangent, output_cotangents), (params, inputs, loss_cotangent,
                                                                         output_cotangents)

    def second_order_on_host(params, inputs, loss_cotangent, output_cotangents, params_tangent, inputs_tangent):
        result = derivatives.second_order(model, host_cotangents(loss_cotangent, output_cotangents),
                                          {k: host(v) for k, v in params_tangent.items()},
                                          {k: host(v) for k, v in inputs_tangent.items()},
                                          **host_inputs(params, inputs))
        cotangent = {k: np.asarray(v, dtype=float_type) for k, v in result.cotangents.items()}
        return ({k: np.asarray(result.params[k], dtype=float_type).reshape(params_spec[k]) for k in params},
                {k: np.asarray(result.inputs[k], dtype=float_type) for k in differentiable_of(inputs)},
                cotangent.pop("loss"), cotangent)

    def vjp_backward(residuals, tangents):
        params, inputs, loss_cotangent, output_cotangents = residuals
        shapes = (float_shapes(params), float_shapes(differentiable_of(inputs)), float_shapes({"": loss_cotangent})[""],
                  float_shapes(output_cotangents))
        params_bar, inputs_bar, loss_bar, outputs_bar = jax.pure_callback(
            second_order_on_host, shapes, params, inputs, loss_cotangent, output_cotangents, *tangents,
            vmap_method="sequential")
        return params_bar, zeros_for_the_others(inputs, inputs_bar), loss_bar, outputs_bar

    vjp.defvjp(vjp_forward, vjp_backward)

    def f_backward(residuals, cotangents):
        params, inputs = residuals
        loss_cotangent, output_cotangents = cotangents
        params_bar, inputs_bar = vjp(params, inputs, loss_cotangent, output_cotangents)
        return params_bar, zeros_for_the_others(inputs, inputs_bar)

    f.defvjp(f_forward, f_backward)

    def model_function(params, **inputs):
        unknown = set(params) ^ set(params_spec)
        if unknown:
            raise SpadcError(f"params must name exactly the model's params ({', '.join(params_spec)}); "
                             f"not `{sorted(unknown)[0]}`")
        converted = {k: (jnp.asarray(v, dtype=float_type) if k in inputs_spec and inputs_spec[k]["dtype"] == "f64"
                         else jnp.asarray(v)) for k, v in inputs.items()}
        return f({k: jnp.asarray(v, dtype=float_type) for k, v in params.items()}, converted)

    return model_function
