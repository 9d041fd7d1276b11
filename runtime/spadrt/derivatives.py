"""Derivatives of anything (INTERFACE.md): a vector-Jacobian product seeded by cotangents of any
float outputs and of the loss, and each sample's gradient of its own loss with respect to its float
inputs. One call of a compiled kernel (spadc/ad/vjp.py): a forward kernel over the reverse sweep of
`sum_k <ct_k, out_k>`, the cotangents passed as inputs shaped like their outputs.

Invariants:
- Per sample, as `forward`: a batch gives stacked outputs and input cotangents; the params'
  cotangents are summed over the batch by a gradient kernel (in place, chunks combined in order, so
  the thread count changes no bit), which divides by the count as for a gradient: the sum is that
  mean times the count (to rounding).
- A cotangent is given per sample ([n, *shape]) or once for every sample (the output's shape).
- Exact reverse mode (estimators do not apply yet); `training=True` keys dropout as `grad` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arguments import Options, merge_inputs, numeric, prepare
from .calls import check_threads
from .errors import SpadcError

VJP, VJP_SUM, WITH_PARAMS = "vjp.", "vjpsum.", ".params"  # kernel names (spadc/ad/vjp.py `parse_kind`)
COTANGENT, INPUT_COTANGENT, PARAM_COTANGENT = "_cotangent.", "_input.", "_grad."


@dataclass
class VJPResult:
    loss: float | np.ndarray  # as `forward`: one per sample for a batch
    outputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]  # each param's cotangent, summed over the batch
    inputs: dict[str, np.ndarray]  # each float input's cotangent, per sample


def seedable(layout: dict) -> dict[str, list[int]]:
    """Name -> shape of what a cotangent may seed: the loss and every float output."""
    found = {o["name"]: o["shape"] for o in layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")}
    found["loss"] = []
    return found


def vjp(model, cotangents, with_params: bool, *, params, training, seed, step, sample_offset, threads, state,
        inputs, keyword_inputs, outputs: bool = True) -> VJPResult:
    """With `with_params`, the params' cotangents (a gradient kernel sums them in place); with
    `outputs`, the loss, the outputs and the inputs' cotangents (a forward kernel, per sample)."""
    options = Options.check(training, seed, step, sample_offset)
    prepared = model._inputs(merge_inputs(inputs, keyword_inputs), state)
    return vjp_prepared(model, cotangents, with_params, prepared, model._params_buffer(params), options,
                        check_threads(threads), outputs)


def vjp_prepared(model, cotangents, with_params: bool, prepared, flat, options, threads: int,
                 outputs: bool = True) -> VJPResult:
    """`vjp` over inputs already checked (`Model._inputs`) and a flat params buffer: what the
    framework wrappers call after a forward pass over the same arguments."""
    seeded, arguments = _with_cotangents(model, cotangents, prepared)
    param_cotangents = {}
    if with_params:
        entry, function = model._kernel(VJP_SUM + "+".join(seeded), "vjp needs its kernel")
        _, mean, _ = model._run(entry, function, prepared=arguments, flat=flat, training=options.training,
                                seed=options.seed, step=options.step, offset=options.offset, threads=threads)
        param_cotangents = model._named(mean.astype(np.float64) * arguments.n)  # the kernel divides by the count
    if not outputs:
        return VJPResult(None, {}, param_cotangents, {})
    losses, named, one = _per_sample(model, VJP + "+".join(seeded), arguments, flat, options, threads, "vjp")
    visible = {name: one(value) for name, value in named.items() if not name.startswith("_")}
    input_cotangents = {name[len(INPUT_COTANGENT):]: one(value) for name, value in named.items()
                        if name.startswith(INPUT_COTANGENT)}
    losses = losses.astype(np.float64)
    return VJPResult(losses if arguments.batched else float(losses[0]), visible, param_cotangents, input_cotangents)


def _per_sample(model, kind: str, prepared, flat, options, threads, purpose: str):
    """(losses, outputs by name as float64, the function that takes a sample's value or the batch's)
    of a forward-type VJP kernel's call."""
    entry, function = model._kernel(kind, f"{purpose} needs its kernel")
    losses, values = model._run_forward(entry, function, entry["outputs"], prepared, flat, options, threads)
    named = {o["name"]: value.astype(np.float64, copy=False) for o, value in zip(entry["outputs"], values)}
    return losses, named, (lambda x: x) if prepared.batched else (lambda x: x[0])


def _with_cotangents(model, cotangents, prepared):
    """(the seeded names, sorted; the inputs with the cotangents after them, as kernel arguments)."""
    targets = seedable(model.layout)
    if not isinstance(cotangents, dict) or not cotangents:
        raise SpadcError("cotangents must be a dict of output name (or \"loss\") to array, with at least one entry; "
                         f"the model's are {', '.join(sorted(targets))}")
    for name in cotangents:
        if name not in targets:
            raise SpadcError(f"a cotangent for `{name}`, which is no float output of the model; its are "
                             f"{', '.join(sorted(targets))}")
    seeded = sorted(cotangents)
    specs = [{"name": COTANGENT + name, "shape": targets[name], "dtype": "f64"} for name in seeded]
    values = {COTANGENT + name: numeric(cotangents[name], f"the cotangent of `{name}`") for name in seeded}
    own = prepare({"inputs": specs}, values, model._dtype)
    if own.batched and (not prepared.batched or own.n != prepared.n):
        given = next(name for name, (_, batched) in zip(seeded, own.keepalive) if batched)
        raise SpadcError(f"the cotangent of `{given}` has a batch of {own.n} samples but the inputs "
                         + (f"have {prepared.n}" if prepared.batched else "are one sample"))
    return seeded, prepared.joined(own)


def jacobian(model, output: str, wrt, *, params, training, seed, step, sample_offset, threads, state, inputs,
             keyword_inputs):
    """Each sample's Jacobian of `output` (a float output or "loss") by reverse mode, one sweep per
    entry of the output: with respect to "params", [n, *output_shape, param_count] (the params'
    flat layout); to "inputs", a dict by float input of [n, *output_shape, *input_shape]; to one
    input's name, that array. One sample (no batch): without the leading axis."""
    targets = seedable(model.layout)
    if output not in targets:
        raise SpadcError(f"no float output `{output}` to differentiate; the model's are {', '.join(sorted(targets))}")
    floats = [spec for spec in model.layout["inputs"] if spec["dtype"] == "f64" and not spec.get("state")]
    if wrt not in ("params", "inputs") and wrt not in {spec["name"] for spec in floats}:
        raise SpadcError(f'wrt must be "params", "inputs" or the name of a float input '
                         f"({', '.join(spec['name'] for spec in floats) or 'the model has none'}), got {wrt!r}")
    shape = targets[output]
    size = int(np.prod(shape, dtype=np.int64))
    with_params = wrt == "params"
    rows = []
    for k in range(size):  # one reverse sweep per entry, its cotangent one-hot for every sample
        seed_vector = np.zeros(size)
        seed_vector[k] = 1.0
        rows.append(_sweep(model, output, seed_vector.reshape(shape), with_params, params, training, seed, step,
                           sample_offset, threads, state, inputs, keyword_inputs))
    batched = rows[0][0]

    def stacked(parts):  # rows of [n, *tail] (or [*tail]) -> [n, *shape, *tail]
        array = np.stack(parts, axis=1 if batched else 0)
        lead = (array.shape[0],) if batched else ()
        return array.reshape(*lead, *shape, *array.shape[len(lead) + 1:])

    if with_params:
        return stacked([row[1] for row in rows])
    named = {name: stacked([row[2][name] for row in rows]) for name in rows[0][2]}
    return named if wrt == "inputs" else named[wrt]


def _sweep(model, output, cotangent, with_params, params, training, seed, step, sample_offset, threads, state,
           inputs, keyword_inputs):
    """(batched, per-sample flat params' cotangents or None, inputs' cotangents) of one VJP."""
    options = Options.check(training, seed, step, sample_offset)
    _, prepared = _with_cotangents(model, {output: cotangent}, model._inputs(merge_inputs(inputs, keyword_inputs), state))
    kind = VJP + output + (WITH_PARAMS if with_params else "")
    _, named, one = _per_sample(model, kind, prepared, model._params_buffer(params), options, check_threads(threads),
                                "jacobian")
    flat = None
    if with_params:
        flat = np.concatenate([named[PARAM_COTANGENT + p["name"]].reshape(prepared.n, -1)
                               for p in model.layout["params"]], axis=1)
        flat = one(flat)
    return prepared.batched, flat, {name[len(INPUT_COTANGENT):]: one(value) for name, value in named.items()
                                    if name.startswith(INPUT_COTANGENT)}
