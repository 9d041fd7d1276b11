"""spadc inside JAX (INTERFACE.md; optional extra `spadc[jax]`, never imported by the core).

`function(model)` is `f(params, **inputs) -> (losses, outputs)`, a JAX function over the compiled
kernels: `params` a dict by param name, the inputs as the model's `forward` takes them (one sample
or a batch), `losses` one per sample, `outputs` the model's float outputs by name. Its derivative is
`jax.custom_vjp` over `Model.vjp` (spadrt/derivatives.py), so `jax.grad`, `jax.vjp` and `jax.jit`
work through it, with respect to the params and the float inputs; `jax.vmap` maps the model over
the mapped axis one call at a time. The kernels run on the host through XLA FFI targets
(spadc/xla_ffi.py: `jax.pure_callback`'s semantics at about a tenth of its cost per call); a kernel's
run-time error fails the call with spadc's message.

Invariants:
- Values are those of `Model.forward` and `Model.vjp` at the same params and inputs, in the build's
  float type (float64 needs `jax_enable_x64`; without it, an f64 build is refused).
- Integer and boolean inputs are not differentiated (their cotangents are float0 zeros).
- Only what is differentiated is computed: the params' cotangents (one gradient kernel) when the
  params are, the inputs' (a kernel per sample) when a float input is, seeded by the outputs used.
- Reverse mode of order two: the VJP is itself a `custom_vjp`, whose VJP is forward mode over the
  VJP kernel (one more callback, not differentiable again).
"""

from __future__ import annotations

import functools

import numpy as np

from spadrt import derivatives
from spadrt.arguments import Options

from .errors import SpadcError

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:  # pragma: no cover (the extra is installed where this is tested)
    raise SpadcError(f"spadc.jax needs JAX ({error}): pip install 'spadc[jax]'") from None

from .xla_ffi import host_call  # noqa: E402 (needs JAX: after the check above)

NO_OPTIONS = Options(training=0, seed=0, step=0, offset=0)  # what every call here runs with (forward's defaults)


def function(model):
    """`f(params, **inputs) -> (losses, outputs)` over `model`'s kernels (see the module's docstring)."""
    float_type = np.float64 if model.layout["dtype"] == "f64" else np.float32
    if float_type is np.float64 and not jax.config.jax_enable_x64:
        raise SpadcError("an f64 model in JAX needs 64-bit floats: jax.config.update('jax_enable_x64', True) "
                         "(or compile the model with dtype='f32')")
    params_spec = {p["name"]: tuple(p["shape"]) for p in model.layout["params"]}
    inputs_spec = {i["name"]: i for i in model.layout["inputs"] if not i.get("state")}
    float_outputs = [(k, o) for k, o in enumerate(model.layout["outputs"])  # (the forward kernel's index, spec)
                     if o["dtype"] == "f64" and not o.get("hidden")]
    differentiable_inputs = {name for name, spec in inputs_spec.items() if spec["dtype"] == "f64"}

    def batch_of(inputs) -> tuple:
        for name, value in inputs.items():
            if name in inputs_spec and np.ndim(value) == len(inputs_spec[name]["shape"]) + 1:
                return (np.shape(value)[0],)
        return ()

    def host(x):
        return np.asarray(x)

    def flat(params):
        """The params as the kernels' one flat buffer, made by XLA (a fused copy) rather than on the host."""
        return jnp.concatenate([jnp.ravel(params[name]) for name in params_spec]) if params_spec else \
            jnp.zeros(0, float_type)

    def forward_on_host(flat_params, inputs):
        prepared = model._inputs({k: host(v) for k, v in inputs.items()})
        losses, outputs = model._forward_arrays(prepared, flat_params, NO_OPTIONS, None)
        one = (lambda a: a) if prepared.batched else (lambda a: a[0])
        return one(losses), {o["name"]: one(outputs[index]) for index, o in float_outputs}

    def result_shapes(inputs):
        lead = batch_of(inputs)
        return (jax.ShapeDtypeStruct(lead, float_type),
                {o["name"]: jax.ShapeDtypeStruct(lead + tuple(o["shape"]), float_type) for _, o in float_outputs})

    def call(params, inputs):
        return host_call(forward_on_host, result_shapes(inputs), flat(params), inputs)

    @jax.custom_vjp
    def f(params, inputs):
        return call(params, inputs)

    def f_forward(params, inputs):
        # With symbolic zeros, JAX says which arguments are differentiated (`perturbed`): the VJP
        # computes only their cotangents (the params': one gradient kernel; the inputs': a kernel per
        # sample). f itself, not its callback, so that an outer differentiation sees f's rule.
        values = jax.tree_util.tree_map(lambda a: a.value, (params, inputs))
        perturbed = jax.tree_util.tree_map(lambda a: a.perturbed, (params, inputs))
        params, inputs = values
        # (What is wanted rides in the residuals' structure: residuals are arrays only.)
        wanted_params = params if any(jax.tree_util.tree_leaves(perturbed[0])) else {}
        wanted_inputs = {k: v for k, v in inputs.items() if perturbed[1][k] and k in differentiable_inputs}
        return f(params, inputs), (params, inputs, wanted_params, wanted_inputs)

    def host_inputs(params, inputs):
        return dict(params={k: host(v) for k, v in params.items()}, training=False, seed=0, step=0, sample_offset=0,
                    threads=None, state=None, inputs={k: host(v) for k, v in inputs.items()}, keyword_inputs={})

    def float_shapes(tree):
        return {k: jax.ShapeDtypeStruct(np.shape(v), float_type) for k, v in tree.items()}

    def zeros_for_the_others(params, inputs, params_bar, inputs_bar):
        """Zeros for what was not asked for; float0 for integer and boolean inputs, which are never
        differentiated."""
        params_bar = params_bar or {k: jnp.zeros_like(v) for k, v in params.items()}
        return params_bar, {k: inputs_bar[k] if k in inputs_bar else
                            jnp.zeros_like(v) if k in differentiable_inputs else
                            np.zeros(np.shape(v), dtype=jax.dtypes.float0) for k, v in inputs.items()}

    # The VJP is a custom_vjp too, whose own VJP is forward mode over the VJP kernel
    # (derivatives.second_order): reverse mode of order two. `wanted`: (the params' cotangents?,
    # the inputs whose cotangents are wanted); `cotangents`: by seeded output name, "loss" included.
    def vjp_shapes(wanted, params, inputs):
        return (float_shapes(params) if wanted[0] else {}), float_shapes({k: inputs[k] for k in wanted[1]})

    def vjp_on_host(wanted, flat_params, inputs, cotangents):
        prepared = model._inputs({k: host(v) for k, v in inputs.items()})
        result = derivatives.vjp_prepared(model, {k: host(v) for k, v in cotangents.items()}, wanted[0], prepared,
                                          flat_params, NO_OPTIONS, None, outputs=bool(wanted[1]))
        return ({k: np.asarray(v, dtype=float_type).reshape(params_spec[k]) for k, v in result.params.items()},
                {k: np.asarray(result.inputs[k], dtype=float_type) for k in wanted[1]})

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def vjp(wanted, params, inputs, cotangents):
        return host_call(functools.partial(vjp_on_host, wanted), vjp_shapes(wanted, params, inputs), flat(params),
                         inputs, cotangents)

    def vjp_forward(wanted, params, inputs, cotangents):
        return vjp(wanted, params, inputs, cotangents), (params, inputs, cotangents)

    def second_order_on_host(params, inputs, cotangents, params_tangent, inputs_tangent):
        result = derivatives.second_order(model, {k: host(v) for k, v in cotangents.items()},
                                          {k: host(v) for k, v in params_tangent.items()},
                                          {k: host(v) for k, v in inputs_tangent.items()},
                                          **host_inputs(params, inputs))
        return ({k: np.asarray(result.params[k], dtype=float_type).reshape(params_spec[k]) for k in params},
                {k: np.asarray(result.inputs[k], dtype=float_type) for k in inputs if k in differentiable_inputs},
                {k: np.asarray(v, dtype=float_type) for k, v in result.cotangents.items()})

    def vjp_backward(wanted, residuals, tangents):
        params, inputs, cotangents = residuals
        floats = {k: v for k, v in inputs.items() if k in differentiable_inputs}
        shapes = float_shapes(params), float_shapes(floats), float_shapes(cotangents)
        params_bar, inputs_bar, cotangents_bar = host_call(second_order_on_host, shapes, params, inputs, cotangents,
                                                           *tangents)
        return (*zeros_for_the_others(params, inputs, params_bar, inputs_bar), cotangents_bar)

    vjp.defvjp(vjp_forward, vjp_backward)

    def f_backward(residuals, cotangents):
        params, inputs, wanted_params, wanted_inputs = residuals
        wanted = (bool(wanted_params), tuple(sorted(wanted_inputs)))
        loss_cotangent, output_cotangents = cotangents
        seeded = {k: v for k, v in [("loss", loss_cotangent), *output_cotangents.items()]
                  if not isinstance(v, jax.custom_derivatives.SymbolicZero)}
        if not seeded or not (wanted[0] or wanted[1]):
            return zeros_for_the_others(params, inputs, None, {})
        return zeros_for_the_others(params, inputs, *vjp(wanted, params, inputs, seeded))

    f.defvjp(f_forward, f_backward, symbolic_zeros=True)

    def model_function(params, **inputs):
        unknown = set(params) ^ set(params_spec)
        if unknown:
            raise SpadcError(f"params must name exactly the model's params ({', '.join(params_spec)}); "
                             f"not `{sorted(unknown)[0]}`")
        for name, value in params.items():  # (the kernels read one flat buffer of exactly these shapes)
            if tuple(np.shape(value)) != params_spec[name]:
                raise SpadcError(f"param `{name}` must have shape {list(params_spec[name])}, "
                                 f"got {list(np.shape(value))}")
        converted = {k: (jnp.asarray(v, dtype=float_type) if k in inputs_spec and inputs_spec[k]["dtype"] == "f64"
                         else jnp.asarray(v)) for k, v in inputs.items()}
        return f({k: jnp.asarray(v, dtype=float_type) for k, v in params.items()}, converted)

    return model_function
