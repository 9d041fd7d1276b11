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
- The params' cotangents are a gradient variant's (of the surrogate `sum_k <ct_k, out_k>`), so an
  estimator (RAD, SPAD) applies to them as to `grad`, keyed by the same seed, step and sample
  indices. Under RAD the per-sample kernel (the inputs' cotangents) is path-sampled too, keyed
  alike; under SPAD it is exact (its distributions are a gradient kernel's argument).
  `training=True` keys dropout as `grad` does. A loss cotangent that is the same for every sample
  (a mean's or a sum's), with no other, takes the loss's own gradient kernel (`grad`'s), scaled:
  the same estimator, keyed alike, and no seeded variant to compile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arguments import Options, merge_inputs, numeric, prepare
from .calls import check_threads
from .errors import SpadcError
from .es import ES, PES
from .estimators import RAD, resolve, sampling_name

# The names of the derived kernels and of their extra inputs and outputs, shared with the compiler
# (spadc/ad/vjp.py, spadc/ad/jacobian.py import them: the runtime runs without it).
VJP, SAMPLED = "vjp.", "@"  # vjp.<seeded outputs joined by '+'>[@<sampling_name>]: a VJP per sample
SECOND_ORDER = "vjp2."  # vjp2.<seeded outputs>: forward mode over the VJP
JACOBIAN, PARAMS, INPUTS = "jac.", "*params", "*inputs"  # jac.<mode>.<sweeps>.<output>.<side>
COTANGENT = "_cotangent."  # the VJP kernels' extra inputs
INPUT_COTANGENT, PARAM_COTANGENT = "_input.", "_grad."  # their outputs, per sample
TANGENT, TANGENT_INPUT = "_tangent.", "_dinput."  # tangents: a param's (shared), a float input's (per sample)


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
        inputs, keyword_inputs, outputs: bool = True, estimator=None) -> VJPResult:
    """With `with_params`, the params' cotangents (a gradient variant sums them in place: exact, or
    estimated by `estimator`); with `outputs`, the loss, the outputs and the inputs' cotangents (a
    forward kernel, per sample). `step=None`: a SPAD estimator's own step counter (as `grad`)."""
    options = Options.check(training, seed, 0 if step is None else step, sample_offset)
    prepared = model._inputs(merge_inputs(inputs, keyword_inputs), state)
    return vjp_prepared(model, cotangents, with_params, prepared, model._params_buffer(params), options,
                        check_threads(threads), outputs, estimator, step)


def vjp_prepared(model, cotangents, with_params: bool, prepared, flat, options, threads: int,
                 outputs: bool = True, estimator=None, step=None) -> VJPResult:
    """`vjp` over inputs already checked (`Model._inputs`) and a flat params buffer: what the
    framework wrappers call after a forward pass over the same arguments."""
    uniform = _uniform_loss_cotangent(cotangents, prepared, estimator) if with_params else None
    param_cotangents = {}
    if uniform is not None:  # the loss's own gradient, scaled: no cotangents to pass, no seeded variant to build
        call = dict(prepared=prepared, flat=flat, training=options.training, seed=options.seed,
                    offset=options.offset, threads=threads)
        _, mean, _, _, n = model._estimate(resolve(estimator), step, call)
        param_cotangents = model._named(np.multiply(mean, n * uniform, dtype=np.float64))
        if not outputs:
            return VJPResult(None, {}, param_cotangents, {})
    seeded, arguments = _with_cotangents(model, cotangents, prepared)
    if with_params and uniform is None:
        call = dict(prepared=arguments, flat=flat, training=options.training, seed=options.seed,
                    offset=options.offset, threads=threads)
        _, mean, _, _, n = model._estimate(resolve(estimator), step, call, seeded=tuple(seeded))
        param_cotangents = model._named(np.multiply(mean, n, dtype=np.float64))  # the kernel divides by the count
    if not outputs:
        return VJPResult(None, {}, param_cotangents, {})
    losses, named, one = _per_sample(model, vjp_kind(seeded, estimator), arguments, flat, options, threads, "vjp")
    visible = {name: one(value) for name, value in named.items() if not name.startswith("_")}
    input_cotangents = {name[len(INPUT_COTANGENT):]: one(value) for name, value in named.items()
                        if name.startswith(INPUT_COTANGENT)}
    losses = losses.astype(np.float64)
    return VJPResult(losses if arguments.batched else float(losses[0]), visible, param_cotangents, input_cotangents)


def _uniform_loss_cotangent(cotangents, prepared, estimator) -> float | None:
    """c, when the cotangents are the loss's alone and c for every sample (what a mean or a sum of
    the losses gives): the params' cotangents are then c n times the loss's mean gradient, `grad`'s
    kernel. None otherwise, and for what the general path checks (or refuses: ES and PES)."""
    if not isinstance(cotangents, dict) or len(cotangents) != 1 or isinstance(estimator, (ES, PES)):
        return None
    value = cotangents.get("loss")
    if type(value) is not np.ndarray or value.dtype.kind != "f" or value.size == 0:
        return None
    if value.shape != () and (not prepared.batched or value.shape != (prepared.n,)):  # a batch of its own
        return None
    # Every entry the first, bit for bit (a byte comparison: a small model's call takes microseconds).
    raw = value.tobytes()
    if raw != raw[:value.itemsize] * value.size:
        return None
    first = float(value.reshape(-1)[0])
    return first if math.isfinite(first) else None


def vjp_kind(seeded, estimator) -> str:
    """The per-sample VJP kernel's name: path-sampled under RAD (the inputs' cotangents too), else
    exact."""
    sampling = resolve(estimator).sampling
    sampled = SAMPLED + sampling_name(sampling) if isinstance(estimator, RAD) and sampling is not None else ""
    return VJP + "+".join(seeded) + sampled


@dataclass
class SecondOrder:
    """The derivatives of a VJP (p_bar, x_bar) = J^T ct along (u_p, u_x), from `second_order`."""
    cotangents: dict[str, np.ndarray]  # by seeded name: J u, per sample (the derivative with respect to ct)
    params: dict[str, np.ndarray]  # H_ct u's params part, summed over the samples
    inputs: dict[str, np.ndarray]  # H_ct u's float inputs part, per sample


def second_order(model, cotangents: dict, params_tangent: dict, inputs_tangent: dict, *, params, training, seed,
                 step, sample_offset, threads, state, inputs, keyword_inputs) -> SecondOrder:
    """Forward mode over the VJP seeded by `cotangents` along the params' tangents (by name, shared
    by the samples) and the float inputs' (per sample, as the inputs): what reverse mode of order
    two needs of a VJP (spadc.jax). Tangents not given are zeros."""
    options = Options.check(training, seed, step, sample_offset)
    prepared = model._inputs(merge_inputs(inputs, keyword_inputs), state)
    seeded, arguments = _with_cotangents(model, cotangents, prepared)
    kind = SECOND_ORDER + "+".join(seeded)
    entry, _ = model._kernel(kind, "second-order derivatives need their kernel")
    own = len(seeded)
    shapes = {p["name"]: p["shape"] for p in model.layout["params"]}
    given = {TANGENT + name: value for name, value in params_tangent.items()}
    given.update({TANGENT_INPUT + name: value for name, value in inputs_tangent.items()})
    unknown = set(given) - {spec["name"] for spec in entry["inputs"][own:]}
    if unknown:
        raise SpadcError(f"no param or float input `{sorted(unknown)[0].split('.', 1)[1]}` to take a tangent along")
    specs, values = [], {}
    for spec in entry["inputs"][own:]:
        specs.append(dict(spec, dtype="f64"))
        name = spec["name"]
        default = np.zeros(shapes[name[len(TANGENT):]]) if name.startswith(TANGENT) else np.zeros(spec["shape"])
        values[name] = numeric(given.get(name, default), f"the tangent `{name.split('.', 1)[1]}`")
    own_arguments = prepare({"inputs": specs}, values, model._dtype)
    _check_batch(own_arguments, [f"the tangent of `{spec['name'].split('.', 1)[1]}`" for spec in specs], arguments)
    _, named, one = _per_sample(model, kind, arguments.joined(own_arguments), model._params_buffer(params), options,
                                check_threads(threads), "second-order derivatives")
    tangent = {name[len(TANGENT):]: value for name, value in named.items() if name.startswith(TANGENT)}
    return SecondOrder({name: one(tangent[name]) for name in seeded if name in cotangents},
                       {p["name"]: tangent[PARAM_COTANGENT + p["name"]].sum(axis=0) for p in model.layout["params"]},
                       {spec["name"]: one(tangent[INPUT_COTANGENT + spec["name"]]) for spec in float_inputs(model.layout)})


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
    # A library built with `--entry vjp` holds the kernels seeded by every output: the others are zeros.
    seeded = sorted(targets if "kernels" in model.layout else cotangents)
    specs = [{"name": COTANGENT + name, "shape": targets[name], "dtype": "f64"} for name in seeded]
    values = {COTANGENT + name: (numeric(cotangents[name], f"the cotangent of `{name}`") if name in cotangents
                                 else np.zeros(targets[name])) for name in seeded}
    own = prepare({"inputs": specs}, values, model._dtype)
    _check_batch(own, [f"the cotangent of `{name}`" for name in seeded], prepared)
    return seeded, prepared.joined(own)


def _check_batch(own, names: list[str], prepared):
    """A kernel's own arguments (`own`, given as `names`) batched as the inputs, shared, or (inputs
    shared by every sample, or none) making the batch themselves."""
    if own.batched and prepared.batched and own.n != prepared.n:
        given = next(name for name, (_, batched) in zip(names, own.keepalive) if batched)
        raise SpadcError(f"{given} has a batch of {own.n} samples but the inputs have {prepared.n}")


def jacobian(model, output: str, wrt, *, params, training, seed, step, sample_offset, threads, state, inputs,
             keyword_inputs):
    """Each sample's Jacobian of `output` (a float output or "loss"), by forward mode when it has
    fewer columns than rows, else by reverse mode: with respect to "params", [n, *output_shape,
    param_count] (the params' flat layout); to "inputs", a dict by float input of [n, *output_shape,
    *input_shape]; to one input's name, that array (a slice of "inputs"). One sample (no batch):
    without the leading axis. Up to SWEEPS_PER_CALL sweeps share one kernel call, and so one
    evaluation of the model."""
    targets = seedable(model.layout)
    if output not in targets:
        raise SpadcError(f"no float output `{output}` to differentiate; the model's are {', '.join(sorted(targets))}")
    floats = float_inputs(model.layout)
    if wrt not in ("params", "inputs") and wrt not in {spec["name"] for spec in floats}:
        raise SpadcError(f'wrt must be "params", "inputs" or the name of a float input '
                         f"({', '.join(spec['name'] for spec in floats) or 'the model has none'}), got {wrt!r}")
    options = Options.check(training, seed, step, sample_offset)
    prepared = model._inputs(merge_inputs(inputs, keyword_inputs), state)
    one = (lambda x: x) if prepared.batched else (lambda x: x[0])
    shape = tuple(targets[output])
    side = PARAMS if wrt == "params" else INPUTS
    columns = model.layout["params"] if side == PARAMS else floats
    if not columns:  # no params, or no float input: an empty Jacobian
        return one(np.zeros((prepared.n, *shape, 0))) if side == PARAMS else {}
    mode, count, kind = jacobian_kind(model.layout, output, side)
    found = _sweeps(model, mode, count, kind, (prepared, model._params_buffer(params), options, check_threads(threads)))
    if mode == "fwd":  # a column per sweep
        array = np.stack(found, axis=-1)  # [n, *shape, width]
        if side == PARAMS:
            return one(array)
        named, start = {}, 0
        for spec in columns:
            size = _size(spec["shape"])
            named[spec["name"]] = one(array[..., start:start + size].reshape(*array.shape[:-1], *spec["shape"]))
            start += size
    else:  # a row per sweep: [n, *tail] each -> [n, *shape, *tail]
        def stacked(rows):
            array = np.stack(rows, axis=1)
            return one(array.reshape(array.shape[0], *shape, *array.shape[2:]))
        if side == PARAMS:
            return stacked(found)
        named = {spec["name"]: stacked([row[spec["name"]] for row in found]) for spec in columns}
    return named if wrt == "inputs" else named[wrt]


SWEEPS_PER_CALL = 16  # a kernel's copies of the sweep (its code grows with them): more sweeps take more calls


def float_inputs(layout: dict) -> list[dict]:
    """The inputs a Jacobian or a cotangent is taken of: the float ones, states aside."""
    return [spec for spec in layout["inputs"] if spec["dtype"] == "f64" and not spec.get("state")]


def jacobian_kind(layout: dict, output: str, side: str) -> tuple[str, int, str]:
    """(mode, sweeps, kernel name) of `output`'s Jacobian with respect to `side` (PARAMS or INPUTS):
    forward mode when the columns are fewer than the rows, else reverse mode."""
    rows = _size(seedable(layout)[output])
    width = layout["param_count"] if side == PARAMS else sum(_size(spec["shape"]) for spec in float_inputs(layout))
    mode, count = ("fwd", width) if width < rows else ("rev", rows)
    return mode, count, f"{JACOBIAN}{mode}.{min(count, SWEEPS_PER_CALL)}.{output}.{side}"


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _sweeps(model, mode: str, count: int, kind: str, call) -> list:
    """Each of the `count` sweeps' results, in order, from calls of kernel `kind` (several sweeps
    each) seeded by one-hot directions, the same for every sample: in forward mode a column of the
    Jacobian ([n, *output_shape]); in reverse mode a row, the params' cotangents flat ([n,
    param_count]) or the float inputs' by name."""
    prepared, flat, options, threads = call
    entry, _ = model._kernel(kind, "jacobian needs its kernel")
    specs = [dict(spec, dtype="f64") for spec in entry["inputs"]]
    per_call = int(kind[len(JACOBIAN):].split(".")[1])
    per_sweep = len(specs) // per_call
    offsets = [0]
    for spec in specs[:per_sweep]:
        offsets.append(offsets[-1] + _size(spec["shape"]))
    results = []
    for first in range(0, count, per_call):
        values = {}
        for b in range(per_call):
            hot = np.zeros(offsets[-1], dtype=model._float)
            if first + b < count:
                hot[first + b] = 1.0
            for k, spec in enumerate(specs[b * per_sweep:(b + 1) * per_sweep]):
                values[spec["name"]] = hot[offsets[k]:offsets[k + 1]].reshape(spec["shape"])
        arguments = prepared.joined(prepare({"inputs": specs}, values, model._dtype))
        _, named, _ = _per_sample(model, kind, arguments, flat, options, threads, "jacobian")
        for b in range(min(per_call, count - first)):
            results.append(_sweep_result(model, mode, named, b))
    return results


def _sweep_result(model, mode: str, named: dict, b: int):
    suffix = f".{b}"
    mine = {name[:-len(suffix)]: value for name, value in named.items() if name.endswith(suffix)}
    if mode == "fwd":
        (column,) = mine.values()
        return column
    params = [mine.get(PARAM_COTANGENT + p["name"]) for p in model.layout["params"]]
    if params and params[0] is not None:
        n = params[0].shape[0]
        return np.concatenate([value.reshape(n, -1) for value in params], axis=1)
    return {name[len(INPUT_COTANGENT):]: value for name, value in mine.items() if name.startswith(INPUT_COTANGENT)}
