"""Derivatives of anything (INTERFACE.md): a vector-Jacobian product seeded by cotangents of any
float outputs and of the loss, and each sample's gradient of its own loss with respect to its float
inputs. One call of a compiled kernel (spadc/ad/vjp.py): a forward kernel over the reverse sweep of
`sum_k <ct_k, out_k>`, the cotangents passed as inputs shaped like their outputs.

Invariants:
- Per sample, as `forward`: a batch gives stacked outputs and input cotangents; the params'
  cotangents are summed over the batch (in sample order, so the thread count changes no bit).
- A cotangent is given per sample ([n, *shape]) or once for every sample (the output's shape).
- Exact reverse mode (estimators do not apply yet); `training=True` keys dropout as `grad` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arguments import Options, merge_inputs, numeric
from .calls import check_threads
from .errors import SpadcError

VJP, WITH_PARAMS = "vjp.", ".params"  # kernel names (spadc/ad/vjp.py `vjp_kind`)
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
        inputs, keyword_inputs) -> VJPResult:
    options = Options.check(training, seed, step, sample_offset)
    targets = seedable(model.layout)
    if not isinstance(cotangents, dict) or not cotangents:
        raise SpadcError("cotangents must be a dict of output name (or \"loss\") to array, with at least one entry; "
                         f"the model's are {', '.join(sorted(targets))}")
    for name in cotangents:
        if name not in targets:
            raise SpadcError(f"a cotangent for `{name}`, which is no float output of the model; its are "
                             f"{', '.join(sorted(targets))}")
    seeded = sorted(cotangents)
    values = merge_inputs(inputs, keyword_inputs)
    taken = [name for name in values if name.startswith(COTANGENT)]
    if taken:
        raise SpadcError(f"unknown input `{taken[0]}`")
    values.update({COTANGENT + name: numeric(cotangents[name], f"the cotangent of `{name}`") for name in seeded})
    extra = [{"name": COTANGENT + name, "shape": targets[name], "dtype": "f64"} for name in seeded]
    prepared = model._inputs(values, state, extra)
    kind = VJP + "+".join(seeded) + (WITH_PARAMS if with_params else "")
    entry, function = model._kernel(kind, "vjp needs its kernel")
    losses, outputs = model._run_forward(entry, function, entry["outputs"], prepared, model._params_buffer(params),
                                         options, check_threads(threads))
    batched = prepared.batched
    named = {o["name"]: value.astype(np.float64, copy=False) for o, value in zip(entry["outputs"], outputs)}
    one = (lambda x: x) if batched else (lambda x: x[0])
    visible = {name: one(value) for name, value in named.items() if not name.startswith("_")}
    input_cotangents = {name[len(INPUT_COTANGENT):]: one(value) for name, value in named.items()
                        if name.startswith(INPUT_COTANGENT)}
    param_cotangents = {name[len(PARAM_COTANGENT):]: value.sum(axis=0) for name, value in named.items()
                        if name.startswith(PARAM_COTANGENT)}
    losses = losses.astype(np.float64)
    return VJPResult(losses if batched else float(losses[0]), visible, param_cotangents, input_cotangents)
