"""Curvature from a compiled model (CURVATURE.md sections 2 and 4): layer taps, per-example
gradients, Fisher diagonals and K-FAC's factors; the top Hessian eigenvalue and Hutchinson's trace.

Scaling (the batch mean): every per-sample quantity is of the sample's own loss `l_s`, the model's
loss being their mean. So `delta_s = d l_s / d z_s`, the per-example gradient is `g_s = outer(delta_s,
a_s)`, the empirical Fisher is `F = mean_s g_s g_s^T` (its diagonal `mean_s g_s^2`), and K-FAC's
factors are `A = mean_s a_s a_s^T`, `B = mean_s delta_s delta_s^T`, so that `F ~ A (x) B` acts on a
weight matrix G as `B G A`. (ASDL, differentiating the batch's mean loss, gets deltas n times smaller
and rescales B by n^2: the same factors.)

`fisher="mc"` replaces each sample's label by one drawn from the model's softmax: Philox4x64-10
keyed (seed, MC_FISHER_SITE), counter (0, 0, sample index, step) (ESTIMATORS.md section 5), one
uniform per sample, inverted through the cumulative probabilities. Curvature is always exact
reverse mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from .arguments import Options, merge_inputs
from .calls import check_threads
from .errors import SpadcError
from .es import stream_words

MC_FISHER_SITE = int.from_bytes(hashlib.blake2b(b"spadc.mc_fisher", digest_size=8).digest(), "little")
FISHERS = ("empirical", "mc")
TAP, SAMPLE_GRADIENT = "_tap.", "_grad."


@dataclass
class LayerTap:
    weight: str
    bias: str | None
    a: np.ndarray  # [n, in], with a column of ones appended when the layer has a bias
    delta: np.ndarray  # [n, out]


@dataclass
class Taps:
    layers: list[LayerTap]
    others: dict[str, np.ndarray]  # per-example gradients of the params outside the layers, [n, *shape]
    n: int


def taps(model, *, fisher: str = "empirical", params=None, training: bool = False, seed: int = 0, step: int = 0,
         sample_offset: int = 0, threads: int | None = None, state: dict | None = None, inputs: dict | None = None,
         **keyword_inputs) -> Taps:
    """Each sample's layer inputs and output gradients (and the other params' gradients)."""
    if fisher not in FISHERS:
        raise SpadcError(f"fisher must be one of {', '.join(FISHERS)}, got {fisher!r}")
    options = Options.check(training, seed, step, sample_offset)
    values = merge_inputs(inputs, keyword_inputs)
    if fisher == "mc":
        values = dict(values, **_sampled_labels(model, values, params, options, threads))
    entry, function = model._kernel("taps", "layer taps need their kernel")
    prepared = model._inputs(values, state)
    _, outputs = model._run_forward(entry, function, entry["outputs"], prepared, model._params_buffer(params),
                                    options, check_threads(threads))
    named = {spec["name"]: value.astype(np.float64, copy=False) for spec, value in zip(entry["outputs"], outputs)}
    layers = []
    for layer in entry["layers"]:
        a = named[f"{TAP}a.{layer['weight']}"]
        if layer["bias"]:
            a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
        layers.append(LayerTap(layer["weight"], layer["bias"], a, named[f"{TAP}delta.{layer['weight']}"]))
    others = {name[len(SAMPLE_GRADIENT):]: value for name, value in named.items() if name.startswith(SAMPLE_GRADIENT)}
    return Taps(layers, others, prepared.n)


def _sampled_labels(model, values: dict, params, options: Options, threads) -> dict:
    classifier = model.layout["classifier"]
    if classifier is None or classifier.get("loss", "cross_entropy") != "cross_entropy":
        raise SpadcError('fisher="mc" draws labels from the model\'s softmax: the loss must be '
                         "cross_entropy(logits, label)")
    result = model.forward(params=params, training=bool(options.training), seed=options.seed, step=options.step,
                           sample_offset=options.offset, threads=threads, inputs=values)
    logits = {**result.outputs, **result.hidden}[classifier["logits"]]
    logits = logits.reshape(-1, logits.shape[-1])
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    words = stream_words(options.seed, options.step, range(options.offset, options.offset + len(logits)), 1,
                         MC_FISHER_SITE)[:, 0]
    uniforms = (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    labels = np.minimum((cumulative < uniforms[:, None]).sum(axis=1), logits.shape[1] - 1).astype(np.int64)
    return {classifier["label"]: labels if np.ndim(result.loss) else labels[0]}  # a batch, or one sample


def per_example_gradients(model, tapped: Taps) -> dict[str, np.ndarray]:
    """Each sample's gradient of its own loss, by param name: [n, *shape]."""
    grads = dict(tapped.others)
    shapes = {p["name"]: p["shape"] for p in model.layout["params"]}
    for layer in tapped.layers:
        full = np.einsum("so,si->soi", layer.delta, layer.a)
        if layer.bias:
            grads[layer.bias] = full[:, :, -1].reshape(tapped.n, *shapes[layer.bias])
            full = full[:, :, :-1]
        grads[layer.weight] = full.reshape(tapped.n, *shapes[layer.weight])
    return grads


def fisher_diagonal(model, tapped: Taps, layers: bool = True) -> np.ndarray:
    """mean_s g_s^2, flat (the params' layout); for a layer from its taps, without forming g_s.
    With `layers=False`, the layers' entries are left at 0 (K-FAC has their factors)."""
    flat = np.zeros(model.layout["param_count"])
    where = {p["name"]: (p["offset"], p["size"]) for p in model.layout["params"]}

    def put(name, values):
        offset, size = where[name]
        flat[offset:offset + size] = np.ravel(values)

    for name, grads in tapped.others.items():
        put(name, np.mean(grads.reshape(tapped.n, -1) ** 2, axis=0))
    for layer in tapped.layers if layers else ():
        squares = (layer.delta ** 2).T @ (layer.a ** 2) / tapped.n  # [out, in(+1)]
        if layer.bias:
            put(layer.bias, squares[:, -1])
            squares = squares[:, :-1]
        put(layer.weight, squares)
    return flat


def kfac_factors(tapped: Taps) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Weight name -> (A, B): A = mean a a^T (with the bias's 1), B = mean delta delta^T."""
    return {layer.weight: (layer.a.T @ layer.a / tapped.n, layer.delta.T @ layer.delta / tapped.n)
            for layer in tapped.layers}


# ---- tools (section 4) -----------------------------------------------------------------------

def top_eigenvalue(model, *, iters: int = 50, tol: float = 1e-8, seed: int = 0, **call) -> float:
    """The Hessian's eigenvalue of largest magnitude, by power iteration on `hvp` from a direction
    drawn with `seed`; stops when the Rayleigh quotient changes by less than `tol` (relative)."""
    size = model.layout["param_count"]
    v = np.random.Generator(np.random.Philox(seed)).standard_normal(size)
    v /= np.linalg.norm(v)
    value = 0.0
    for _ in range(max(int(iters), 1)):
        hv = model.flat_hvp(v, **call)[2].astype(np.float64)
        previous, value = value, float(v @ hv)
        norm = np.linalg.norm(hv)
        if norm == 0.0:
            return 0.0
        v = hv / norm
        if abs(value - previous) <= tol * abs(value):
            break
    return value


def hutchinson_trace(model, samples: int, *, seed: int = 0, **call) -> tuple[float, float]:
    """(estimate, standard error) of tr(H) from `samples` Rademacher probes z: mean z^T H z."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise SpadcError(f"samples must be a positive integer, got {samples!r}")
    rng = np.random.Generator(np.random.Philox(seed))
    size = model.layout["param_count"]
    values = []
    for _ in range(int(samples)):
        z = rng.integers(0, 2, size) * 2.0 - 1.0
        values.append(float(z @ model.flat_hvp(z, **call)[2]))
    error = float(np.std(values, ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")
    return float(np.mean(values)), error
