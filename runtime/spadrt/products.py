"""Curvature products over compiled kernels (CURVATURE.md section 1): `jvp`, `hvp` and `ggn_vp`.

Each product kernel takes the direction `v` as one more input per param, shared by every sample
(stride 0), after the model's own inputs; spadc compiles it on first use (spadc/ad/forward.py).

Invariants:
- `jvp` is per sample, as `forward` is: a batch gives one loss tangent per sample and stacked
  output tangents. `hvp` and `ggn_vp` are products with the curvature of the *mean* loss over the
  batch, as `grad` gives its gradient; both are combined over chunks in chunk order, so the result
  does not depend on the thread count.
- Curvature is of the exact loss: no estimator takes part (`training=True` keys dropout, whose
  masks the product then holds fixed, as the gradient does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import calls
from .arguments import Options, Prepared, merge_inputs
from .errors import SpadcError

TANGENT = "_tangent."  # the product kernels' extra inputs and the jvp kernel's extra outputs


@dataclass
class JVPResult:
    loss: float | np.ndarray  # as `forward`: one per sample for a batch
    loss_tangent: float | np.ndarray  # the directional derivative of the loss along v
    outputs: dict[str, np.ndarray]
    tangents: dict[str, np.ndarray]  # of every float output


@dataclass(frozen=True)
class Call:
    """A product call's arguments, checked: the model's inputs with the direction appended."""
    prepared: Prepared
    params: np.ndarray
    options: Options
    threads: int


def prepare_call(model, v, params, training, seed, step, sample_offset, threads, inputs, keyword_inputs,
                 state) -> Call:
    options = Options.check(training, seed, step, sample_offset)
    prepared = model._inputs(merge_inputs(inputs, keyword_inputs), state)
    direction = _direction(model, v)
    # Each param's slice of the direction is one more input, shared by every sample.
    slices = [(direction[p["offset"]:p["offset"] + p["size"]], False) for p in model.layout["params"]]
    extended = prepared.joined(Prepared(prepared.n, prepared.batched, None, None, slices))
    return Call(extended, model._params_buffer(params), options, calls.check_threads(threads))


def _direction(model, v) -> np.ndarray:
    if v is None:
        raise SpadcError("the direction v is missing: a dict of param name to array, or a flat array")
    try:
        return np.array(model._flat_params(v), dtype=model._float)  # a copy: never the model's own buffer
    except SpadcError as error:
        raise SpadcError(f"the direction v: {error.bare_message}") from None


def jvp(model, call: Call) -> JVPResult:
    entry, function = model._kernel("jvp", "jvp needs its product kernel")
    losses, outputs = model._run_forward(entry, function, entry["outputs"], call.prepared, call.params, call.options,
                                         call.threads)
    batched = call.prepared.batched
    named = {o["name"]: (value if batched else value[0]) for o, value in zip(entry["outputs"], outputs)}
    as_float = (lambda x: x.astype(np.float64)) if batched else float
    visible = {name: value for name, value in named.items() if not name.startswith("_")}
    tangents = {name[len(TANGENT):]: value for name, value in named.items()
                if name.startswith(TANGENT) and name != TANGENT + "loss"}
    return JVPResult(as_float(losses if batched else losses[0]), as_float(named[TANGENT + "loss"]), visible, tangents)


def hvp(model, call: Call) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss, mean gradient, H v), flat: the kernel sums both in one pass."""
    entry, function = model._kernel("hvp", "hvp needs its product kernel")
    loss, flat, _ = _run(model, entry, function, call)
    count = model.layout["param_count"]
    return loss, flat[:count], flat[count:]


def ggn_vp(model, call: Call) -> np.ndarray:
    """J^T H_out J v of the mean loss, flat."""
    entry, function = model._kernel("ggn", "ggn_vp needs its product kernel")
    return _run(model, entry, function, call)[1]


def _run(model, entry, function, call: Call):
    o = call.options
    return model._run(entry, function, prepared=call.prepared, flat=call.params, training=o.training, seed=o.seed,
                      step=o.step, offset=o.offset, threads=call.threads)
