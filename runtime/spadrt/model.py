"""The `Model` interface of INTERFACE.md over compiled kernels (spadc's JIT or a built library).

Invariants:
- Nothing a caller passes can crash the process: inputs are checked against the layout (names,
  shapes, dtypes, batch sizes) before any kernel runs, and a failed run-time check in the kernel
  (an index or label out of range) becomes a `SpadcError` naming the source line.
- Parameters live in one flat float buffer laid out as the kernel expects; `params` gives views of
  it, so `model.params["W"][...] = x` changes the model.
- An input with one more leading dimension than declared is a batch. `forward` and `loss` then
  give one loss per sample; `grad` gives the mean loss and the mean gradient.
- Safe to call from many threads at once (spadrt/calls.py: each call has its own workspace and
  status). A batch runs in chunks on `threads` cores (default: all), with the same bits for any
  thread count. What is not safe: changing params (or `init_params`, `load`) while another thread
  calls, and one SPAD estimator object driven from several threads (its step counter and
  ranking are shared state: give each thread its own).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from . import calls, derivatives, products, reduction, split_kernels
from .arguments import (NO_DATA, NO_DATA_ADDRESS, Options, Prepared, check_seed, float_array, merge_inputs, prepare,
                        with_state)
from .errors import SpadcError
from .es import ES, PES, es_gradient, pes_gradient
from .estimators import RAD, SPAD, Exact, resolve, variant_key
from .files import read_npz, save_npz
from .init import initial_value
from .spad_steps import spad_gradient

# Every pointer is passed as a plain address (c_void_p): the cheapest call ctypes can make.
_POINTER, _I64, _U64_T = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64
_COMMON = [_POINTER, _POINTER, _POINTER, _I64, _I64, _I64, _U64_T, _U64_T]
FORWARD_TYPE = ctypes.CFUNCTYPE(_I64, *_COMMON, _POINTER, _POINTER, _POINTER, _POINTER)
PARTICLES_TYPE = ctypes.CFUNCTYPE(_I64, *_COMMON, _POINTER, _POINTER, _POINTER, _POINTER, _I64, _I64, _POINTER)
GRAD_TYPE = ctypes.CFUNCTYPE(_I64, *_COMMON, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER, _POINTER)
GRADS_ARGUMENT = len(_COMMON) + 1  # (after the mean loss)
CHUNK_TYPE = ctypes.CFUNCTYPE(_I64, *GRAD_TYPE._argtypes_, _POINTER, _POINTER)  # a split kernel's `_chunk`
KERNEL_TYPES = {"forward": FORWARD_TYPE, "particles": PARTICLES_TYPE, "jvp": FORWARD_TYPE, "hvp": GRAD_TYPE, "ggn": GRAD_TYPE,
                "taps": FORWARD_TYPE}
_NUMPY = {"i64": np.int64, "bool": np.bool_}
# Keywords of forward/loss/grad that are not inputs: an input of one of these names must be passed
# in `inputs=` (the checker warns about such names).
CALL_OPTIONS = ("params", "estimator", "training", "seed", "step", "sample_offset", "stats", "inputs", "threads",
                "state", "cluster")
STATE_OUTPUT = "_state."  # the hidden outputs that carry states out (spadc/ir/core.py)
_U64 = (1 << 64) - 1


@dataclass
class ForwardResult:
    loss: float | np.ndarray  # one float, or one per sample for a batch
    outputs: dict[str, np.ndarray]
    state: dict[str, np.ndarray] = None  # each `state`'s value at the end of the call (LANGUAGE.md 1.1)


@dataclass
class _Place:
    file: str
    line: int
    col: int
    source_line: str


class Model:
    """A compiled model: its parameters, and forward and gradient evaluation from NumPy values."""

    def __init__(self, layout: dict, forward_address: int | None, gradient_provider, keepalive=None,
                 kernel_provider=None, replan=None, library=None):
        """`gradient_provider(sampling, score, policy, seeded)` gives (layout entry, address, owner) of a
        gradient kernel variant (compiling it if it can); `kernel_provider(kind)` the same of one of
        the KERNEL_TYPES (the forward kernel when `forward_address` is None, ES's particles, the
        curvature products, VJPs and Jacobians), or None where it has none (a library).
        `replan(max_memory, checkpoint)`: the same model compiled under another memory plan (None
        where there is no compiler: a loaded library). `library(estimator, entries)`: (the bytes of a
        shared library with this model's kernels for this host, its layout), what a cluster's workers
        load (spadc/cluster.py)."""
        self._library = library
        self.layout = layout
        self._replan = replan
        self._plans: dict[tuple, "Model"] = {}  # (max_memory, checkpoint) -> the model under that plan
        self._keepalive = keepalive  # whatever owns the machine code (a JIT engine, a loaded library)
        self._forward = None if forward_address is None else (layout["forward"], FORWARD_TYPE(forward_address))
        self._provider = gradient_provider
        self._kernel_provider = kernel_provider
        self._variants: dict[str, tuple] = {}
        self._splits: dict[int, split_kernels.SplitKernels] = {}  # id(entry) -> a split gradient kernel's parts
        self._float = np.float64 if layout["dtype"] == "f64" else np.float32
        self._flat = np.zeros(layout["param_count"], dtype=self._float)  # never reallocated: views stay valid
        self._flat_address = calls.address(self._flat)
        self._scratch = calls.ScratchPool()
        self._param_slices = [(p["name"], p["offset"], p["offset"] + p["size"], tuple(p["shape"]))
                              for p in layout["params"]]
        self._buffers = calls.BufferPool()
        self._compile_lock = threading.Lock()
        self.init_params(0)

    # ---- parameters ----------------------------------------------------------------

    @property
    def param_names(self) -> list[str]:
        return [p["name"] for p in self.layout["params"]]

    @property
    def params(self) -> dict[str, np.ndarray]:
        return {p["name"]: self._flat[p["offset"]:p["offset"] + p["size"]].reshape(p["shape"])
                for p in self.layout["params"]}

    def init_params(self, seed: int = 0):
        """Re-draw every parameter from its initialiser, with this seed."""
        seed = check_seed(seed, "seed")
        for p in self.layout["params"]:
            value = initial_value(p["name"], p["shape"], p["init"]["kind"], p["init"]["args"], p["bounds"], seed)
            self._flat[p["offset"]:p["offset"] + p["size"]] = value.ravel()

    def project_params(self, flat: np.ndarray | None = None):
        """Clip every param (of the model, or of a flat array laid out as its are) into its
        `in [lo, hi]` box (optimisers call this after each step)."""
        flat = self._flat if flat is None else flat
        for p in self.layout["params"]:
            if p["bounds"]:
                view = flat[p["offset"]:p["offset"] + p["size"]]
                np.clip(view, *p["bounds"], out=view)

    def set_params(self, values):
        """Replace the parameters from a dict of arrays or a flat array."""
        self._flat[:] = self._flat_params(values)

    def save(self, path: str):
        """Write the params to exactly `path` (.npz format), atomically: a crash leaves the old file."""
        save_npz(path, {name: np.asarray(v, dtype=np.float64) for name, v in self.params.items()}, "parameters")

    def load(self, path: str):
        values = read_npz(path, "parameters", names=self.param_names, limit=16 * self._flat.nbytes + 4096)
        try:
            self.set_params(values)
        except SpadcError as error:  # a missing or misshapen param: say which file
            raise SpadcError(f"{os.fspath(path)}: {error}") from None

    def _flat_params(self, values) -> np.ndarray:
        if values is None:
            return self._flat
        if isinstance(values, dict):
            unknown = set(values) - set(self.param_names)
            if unknown:
                raise SpadcError(f"unknown param `{sorted(unknown)[0]}`; the model's params are "
                                 f"{', '.join(self.param_names) or 'none'}")
            flat = self._flat.copy()
            for p in self.layout["params"]:
                if p["name"] not in values:
                    raise SpadcError(f"missing param `{p['name']}`")
                value = float_array(values[p["name"]], f"param `{p['name']}`")
                if list(value.shape) != p["shape"]:
                    raise SpadcError(f"param `{p['name']}` must have shape {p['shape']}, got {list(value.shape)}")
                flat[p["offset"]:p["offset"] + p["size"]] = value.ravel()
            return flat
        flat = float_array(values, "params")
        if flat.shape != self._flat.shape:
            raise SpadcError(f"a flat params array must have {self._flat.size} entries, got shape {list(flat.shape)}")
        return np.ascontiguousarray(flat, dtype=self._float)

    # ---- evaluation ------------------------------------------------------------------

    def forward(self, *, params=None, training: bool = False, seed: int = 0, step: int = 0, sample_offset: int = 0,
                threads: int | None = None, state: dict | None = None, inputs: dict | None = None,
                **keyword_inputs) -> ForwardResult:
        """One loss per sample and the outputs. Inputs come as keywords or in `inputs=` (which any
        input name fits, even one spelt like an option such as `seed`). `state`: the incoming value
        of each `state` (default its initial value); `result.state` holds the values to carry on."""
        options = Options.check(training, seed, step, sample_offset)
        prepared = self._inputs(merge_inputs(inputs, keyword_inputs), state)
        losses, outputs = self._forward_arrays(prepared, self._params_buffer(params), options,
                                               calls.check_threads(threads))
        named = {o["name"]: (v if prepared.batched else v[0]) for o, v in zip(self.layout["outputs"], outputs)}
        visible = {name: value for name, value in named.items() if not name.startswith("_")}
        result = ForwardResult(losses.astype(np.float64) if prepared.batched else float(losses[0]), visible,
                               {s["name"]: named[STATE_OUTPUT + s["name"]] for s in self.layout.get("state", [])})
        result.hidden = {name: value for name, value in named.items() if name.startswith("_")}
        return result

    def _forward_arrays(self, prepared: Prepared, params_buffer, options, threads: int):
        """The forward kernel's (losses, outputs in the layout's order) over checked arguments."""
        entry, function = self._forward or self._kernel("forward", "the forward kernel")
        return self._run_forward(entry, function, self.layout["outputs"], prepared, params_buffer, options, threads)

    def _run_forward(self, kernel: dict, function, specs: list[dict], prepared: Prepared, params_buffer, options,
                     threads: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Call a forward-type kernel over the batch, in chunks: (a loss per sample, each output of
        `specs` stacked over the samples)."""
        n = prepared.n
        losses = np.empty(n, dtype=self._float)
        outputs = [np.empty((n, *o["shape"]), dtype=self._dtype(o["dtype"])) for o in specs]

        def chunk(start: int, stop: int):
            addresses = (ctypes.c_void_p * max(len(outputs), 1))(*[calls.address(o[start:]) for o in outputs])
            scratch = self._scratch.take()
            try:
                code = function(calls.address(params_buffer), *prepared.chunk(start), stop - start,
                                options.offset + start, options.training, options.seed, options.step,
                                calls.address(losses[start:]), addresses, scratch.workspace(kernel["workspace"]),
                                scratch.status_address)
                self._raise_on_failure(code, prepared.batched, kernel["checks"], scratch.status)
            finally:
                self._scratch.give(scratch)

        calls.run_chunks(chunk, n, threads)
        return losses, outputs

    def loss(self, **kwargs):
        return self.forward(**kwargs).loss

    def grad(self, *, params=None, estimator=None, training: bool = False, seed: int = 0, step: int | None = None,
             sample_offset: int = 0, stats: bool = False, threads: int | None = None, state: dict | None = None,
             inputs: dict | None = None, max_memory=None, checkpoint=None, cluster=None, **keyword_inputs):
        """The mean loss and gradient over the batch: exact, or estimated (ESTIMATORS.md).

        `seed`, `step` and `sample_offset` key the random stream; exact gradients ignore them. A SPAD
        estimator uses and advances its own step counter unless `step` is given. `threads`: cores
        the batch is spread over (default all; the result is the same for any number). `state`: the
        incoming value of each `state`, an input that is not differentiated (default its initial
        value); `forward` gives the values to carry on. `max_memory`, `checkpoint`: a memory plan
        for this call other than the one the model was compiled with (ESTIMATORS.md section 9; the
        kernels are compiled once per plan, and the gradient's bits do not depend on it). `cluster`: a
        `spadc.Ray` whose workers compute the batch's chunks (exact, RAD) or the population's blocks
        (ES), the same bits as here (spadc/cluster.py)."""
        if not isinstance(stats, bool):
            raise SpadcError(f"stats must be True or False, got {stats!r}")
        if max_memory is not None or checkpoint is not None:
            planned = self._planned(max_memory, checkpoint)
            return planned.grad(params=self.params if params is None else params, estimator=estimator,
                                training=training, seed=seed, step=step, sample_offset=sample_offset, stats=stats,
                                threads=threads, state=state, inputs=inputs, cluster=cluster, **keyword_inputs)
        loss, flat, measured, entry, n = self._gradient(params, estimator, training, seed, step, sample_offset,
                                                        threads, merge_inputs(inputs, keyword_inputs), state,
                                                        cluster=cluster)
        named = self._named(flat)
        if stats:
            # Each concurrent kernel call has a workspace of its own (spadrt/calls.py).
            spans = calls.chunks(n, entry.get("chunk", calls.CHUNK))
            concurrent = min(calls.cores(calls.check_threads(threads)), len(spans)) if n else 1
            return loss, named, {"tape_bytes": measured, "tape_bytes_static": entry["tape_bytes"],
                                 "workspace_bytes": entry["workspace"], "samples": n,
                                 "peak_workspace_bytes": entry["workspace"] * concurrent,
                                 "forward_replays": entry.get("forward_replays", 0)}
        return loss, named

    def _planned(self, max_memory, checkpoint) -> "Model":
        """This model compiled under another memory plan (once per plan)."""
        if self._replan is None:
            raise SpadcError("this model has one memory plan, fixed when it was built ahead of time: build it again "
                             "with `spadc build --max-memory ... --checkpoint ...` (or aot.build's keywords) instead "
                             "of passing max_memory or checkpoint to grad")
        key = (str(max_memory), str(checkpoint))
        with self._compile_lock:
            if key not in self._plans:
                self._plans[key] = self._replan(max_memory, checkpoint)
            return self._plans[key]

    def flat_grad(self, *, params=None, estimator=None, training: bool = False, seed: int = 0,
                  step: int | None = None, sample_offset: int = 0, threads: int | None = None,
                  state: dict | None = None, inputs: dict | None = None, cluster=None, **keyword_inputs):
        """`grad` for optimisers: (mean loss, the gradient as one flat array, tape bytes per sample)."""
        loss, flat, measured, _, _ = self._gradient(params, estimator, training, seed, step, sample_offset,
                                                    threads, merge_inputs(inputs, keyword_inputs), state,
                                                    cluster=cluster)
        return loss, flat, measured

    def _flat_grad_into(self, out: np.ndarray, *, estimator=None, training=False, seed=0, step=None,
                        sample_offset=0, threads=None, state=None, inputs=None, cluster=None):
        """`flat_grad` writing the gradient into `out` when it can (a training loop's own buffer,
        reused every step: a fresh array of a large model's size costs page faults each time)."""
        loss, flat, measured, _, _ = self._gradient(None, estimator, training, seed, step, sample_offset, threads,
                                                    inputs or {}, state, out=out, cluster=cluster)
        return loss, flat, measured

    # ---- curvature products (CURVATURE.md section 1; spadrt/products.py) --------------------

    def jvp(self, v, *, params=None, training: bool = False, seed: int = 0, step: int = 0, sample_offset: int = 0,
            threads: int | None = None, state: dict | None = None, inputs: dict | None = None,
            **keyword_inputs) -> products.JVPResult:
        """Forward mode: the loss, the outputs, and their directional derivatives along the param
        direction `v` (a dict of param name to array, or a flat array), per sample as `forward`."""
        return products.jvp(self, products.prepare_call(self, v, params, training, seed, step, sample_offset, threads,
                                                        inputs, keyword_inputs, state))

    # ---- derivatives of anything (INTERFACE.md; spadrt/derivatives.py) ----------------------------

    def vjp(self, cotangents: dict, *, params=None, estimator=None, training: bool = False, seed: int = 0,
            step: int | None = None, sample_offset: int = 0, threads: int | None = None, state: dict | None = None,
            inputs: dict | None = None, **keyword_inputs) -> derivatives.VJPResult:
        """The vector-Jacobian product seeded by `cotangents` (output name, or "loss", to an array of
        its shape, or [n, ...] of it): the outputs, the params' cotangents summed over the batch
        (exact, or estimated by `estimator` as `grad` estimates the gradient: RAD or SPAD), and
        every float input's cotangent per sample (path-sampled too under RAD)."""
        return derivatives.vjp(self, cotangents, True, params=params, training=training, seed=seed, step=step,
                               sample_offset=sample_offset, threads=threads, state=state, inputs=inputs,
                               keyword_inputs=keyword_inputs, estimator=estimator)

    def input_grad(self, *, params=None, estimator=None, training: bool = False, seed: int = 0, step: int = 0,
                   sample_offset: int = 0, threads: int | None = None, state: dict | None = None,
                   inputs: dict | None = None, **keyword_inputs) -> tuple:
        """(each sample's loss, each float input's gradient of the sample's own loss, per sample):
        exact, or path-sampled by RAD (keyed by seed, step and sample, as `grad`)."""
        if not isinstance(resolve(estimator), (Exact, RAD)):
            raise SpadcError("input_grad takes the exact reverse sweep or RAD (SPAD's distributions, and ES's "
                             "particles, belong to the params' gradient)")
        result = derivatives.vjp(self, {"loss": 1.0}, False, params=params, training=training, seed=seed, step=step,
                                 sample_offset=sample_offset, threads=threads, state=state, inputs=inputs,
                                 keyword_inputs=keyword_inputs, estimator=estimator)
        return result.loss, result.inputs

    def jacobian(self, output: str, wrt="inputs", *, params=None, training: bool = False, seed: int = 0, step: int = 0,
                 sample_offset: int = 0, threads: int | None = None, state: dict | None = None,
                 inputs: dict | None = None, **keyword_inputs):
        """Each sample's Jacobian of `output` (or "loss"), by forward or reverse mode, whichever
        takes fewer sweeps: with respect to "params", [n, *output_shape, param_count]; to "inputs",
        a dict by float input of [n, *output_shape, *input_shape]; to one input's name, that array
        (spadrt/derivatives.py)."""
        return derivatives.jacobian(self, output, wrt, params=params, training=training, seed=seed, step=step,
                                    sample_offset=sample_offset, threads=threads, state=state, inputs=inputs,
                                    keyword_inputs=keyword_inputs)

    def hvp(self, v, *, params=None, training: bool = False, seed: int = 0, step: int = 0, sample_offset: int = 0,
            threads: int | None = None, state: dict | None = None, inputs: dict | None = None,
            **keyword_inputs) -> dict[str, np.ndarray]:
        """H v, H the Hessian of the mean loss over the batch (forward over reverse), by param name."""
        return self._named(self.flat_hvp(v, params=params, training=training, seed=seed, step=step,
                                         sample_offset=sample_offset, threads=threads, state=state, inputs=inputs,
                                         **keyword_inputs)[2])

    def flat_hvp(self, v, *, params=None, training: bool = False, seed: int = 0, step: int = 0,
                 sample_offset: int = 0, threads: int | None = None, state: dict | None = None,
                 inputs: dict | None = None, **keyword_inputs) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, flat gradient, flat H v), from one pass over the batch."""
        return products.hvp(self, products.prepare_call(self, v, params, training, seed, step, sample_offset, threads,
                                                        inputs, keyword_inputs, state))

    def ggn_vp(self, v, *, params=None, training: bool = False, seed: int = 0, step: int = 0, sample_offset: int = 0,
               threads: int | None = None, state: dict | None = None, inputs: dict | None = None,
               **keyword_inputs) -> dict[str, np.ndarray]:
        """J^T H_out J v, the generalized Gauss-Newton product of the mean loss, by param name; the
        loss must be `cross_entropy(...)` or `mse(...)` as a whole."""
        return self._named(self.flat_ggn_vp(v, params=params, training=training, seed=seed, step=step,
                                            sample_offset=sample_offset, threads=threads, state=state, inputs=inputs,
                                            **keyword_inputs))

    def flat_ggn_vp(self, v, *, params=None, training: bool = False, seed: int = 0, step: int = 0,
                    sample_offset: int = 0, threads: int | None = None, state: dict | None = None,
                    inputs: dict | None = None, **keyword_inputs) -> np.ndarray:
        return products.ggn_vp(self, products.prepare_call(self, v, params, training, seed, step, sample_offset,
                                                           threads, inputs, keyword_inputs, state))

    def _named(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        named = {name: flat[start:stop].reshape(shape) for name, start, stop, shape in self._param_slices}
        return named if flat.dtype == np.float64 else {k: v.astype(np.float64) for k, v in named.items()}

    @property
    def flat_params(self) -> np.ndarray:
        """All parameters as one flat array, laid out as `layout["params"]` says (updates in place change the model)."""
        return self._flat

    def fit(self, data: dict | None, **options):
        """Train on `data` (arrays named after the inputs, first axis the sample), or with `data=None`
        and `steps=N` a model without inputs; see spadrt.training.fit."""
        from .training import fit
        return fit(self, data, **options)

    def _gradient(self, params, estimator, training, seed, step, offset, threads, inputs, state=None, out=None,
                  cluster=None):
        options = Options.check(training, seed, 0 if step is None else step, offset)
        prepared = self._inputs(inputs, state)
        call = dict(prepared=prepared, flat=self._params_buffer(params), training=options.training,
                    seed=options.seed, offset=options.offset, threads=calls.check_threads(threads))
        return self._estimate(resolve(estimator), step, call, episode_start=state is None, out=out, cluster=cluster)

    def _estimate(self, estimator, step, call: dict, *, episode_start: bool = True, seeded=(), out=None,
                  cluster=None):
        """(mean loss, flat gradient, tape bytes per sample, kernel entry, samples) of one estimate
        over checked arguments (`call`: `_run`'s keywords but `step`); with `seeded`, of a VJP's
        surrogate (its cotangents among the arguments) in place of the loss; with a `cluster`, by its
        workers."""
        if cluster is not None:
            loss, flat, measured, entry = cluster.estimate(self, estimator, step or 0, call, out)
        elif isinstance(estimator, (ES, PES)):
            if seeded:
                raise SpadcError(f"{type(estimator).__name__} estimates the loss's gradient only; a vjp takes "
                                 "the exact reverse sweep, RAD or SPAD")
            if isinstance(estimator, ES):
                loss, flat, entry = es_gradient(self, estimator, step or 0, **call)
            else:
                loss, flat, entry = pes_gradient(self, estimator, step or 0, episode_start=episode_start, **call)
            measured = 0  # forward passes only: no tape
        elif isinstance(estimator, SPAD):
            loss, flat, measured, entry = spad_gradient(self, estimator, step, call, seeded)
        else:
            entry, function = self._variant(estimator.sampling, seeded=seeded)
            loss, flat, measured = self._run(entry, function, step=step or 0, out=out, **call)
        n = call["prepared"].n
        return loss, flat, measured / n, entry, n

    def _particles(self):
        """(layout entry, function) of the forward kernel with a parameter vector per particle."""
        return self._kernel("particles", "ES needs the forward kernel with a parameter vector per particle")

    def _kernel(self, kind: str, purpose: str):
        """(layout entry, function) of an extra kernel, compiled (or loaded) on first use."""
        with self._compile_lock:
            if kind not in self._variants:
                found = self._kernel_provider(kind) if self._kernel_provider is not None else None
                if found is None:
                    entry = next((name for prefix, name in ((derivatives.VJP, "vjp"), (derivatives.JACOBIAN, "jacobian"),
                                                            ("particles", "particles")) if kind.startswith(prefix)), None)
                    raise SpadcError(f"{purpose}, which this library was built without"
                                     + (f" (build it with `spadc build ... --entry {entry}`)" if entry else ""))
                entry, address, owner = found
                kernel_type = (FORWARD_TYPE if kind.startswith((derivatives.VJP, derivatives.JACOBIAN,
                                                                derivatives.SECOND_ORDER))
                               else KERNEL_TYPES[kind])
                self._install(kind, entry, address, owner, kernel_type)
            entry, function, _ = self._variants[kind]
        return entry, function

    def _variant(self, sampling, score=None, policy=None, seeded=()):
        key = variant_key(sampling, score, policy, seeded)
        with self._compile_lock:  # one thread compiles a variant; the others wait for it
            if key not in self._variants:
                entry, address, owner = self._provider(sampling, score, policy, seeded)
                self._install(key, entry, address, owner, GRAD_TYPE)
            entry, function, _ = self._variants[key]
        return entry, function

    def _install(self, key: str, entry: dict, address: int, owner, kernel_type):
        """A kernel in the table; quick code whose owner may optimise it (spadc/backend/tiers.py) is
        wrapped so that its calls count its work, and replaced by the optimised code when made."""
        function = kernel_type(address)
        if hasattr(owner, "ran"):
            def promoted(optimised):
                self._variants[key] = (entry, optimised, owner)
            function = calls.Promoting(function, owner, kernel_type, promoted)
        self._variants[key] = (entry, function, owner)
        if entry.get("hoisted") and kernel_type is GRAD_TYPE:
            self._splits[id(entry)] = split_kernels.SplitKernels(entry, owner, CHUNK_TYPE, self._float)

    def _run(self, entry, function, *, prepared, flat, training, seed, step, offset, threads=1, site_data=None,
             scores=None, out=None):
        """Call one gradient kernel over the batch, in chunks: (mean loss, flat gradient, tape bytes
        stored over the batch). Chunks' mean losses are weighted by their sizes and summed in chunk
        order, their gradients (each weighted so) by the tree of spadrt/reduction.py; their scores
        are added to `scores` in chunk order."""
        parts = self._chunk_parts(entry, function, prepared=prepared, flat=flat, training=training, seed=seed,
                                  step=step, offset=offset, threads=threads, site_data=site_data, scores=scores,
                                  total=prepared.n, out=out)
        if scores is not None:
            for part in parts:
                scores += part[4]
        if len(parts) == 1:
            _, loss, grads, stored, _ = parts[0]
            return loss, grads, stored
        known = {(k, k + 1): part[2] for k, part in enumerate(parts)}
        loss, grads, stored = self._combined([part[:2] + part[3:4] for part in parts], known, prepared.n, out,
                                             self._finisher(entry, flat, prepared.n))
        for part in parts:
            # (the sum, made in the first chunk's buffer, is the caller's; of a split kernel, a view of it)
            if part[2] is not grads and part[2] is not grads.base:
                self._buffers.give(part[2])
        return loss, grads, stored

    def _split(self, entry, total: int) -> split_kernels.SplitKernels | None:
        """The parts of a split kernel, for a batch of `total` samples that takes several calls."""
        return self._splits.get(id(entry)) if total > entry.get("chunk", calls.CHUNK) else None

    def _finisher(self, entry, flat, total: int):
        """How the sum of a batch's chunk buffers becomes its gradient (spadrt/split_kernels.py):
        a function of (the sum, the run of the gradient it holds), or None where it is the gradient."""
        split = self._split(entry, total)
        if split is None:
            return None

        def run_finish(finish, image, adjoints):
            scratch = self._scratch.take()
            try:
                code = finish(calls.address(flat), scratch.workspace(entry["workspace"]), scratch.status_address,
                              image, adjoints)
                self._raise_on_failure(code, True, entry["checks"], scratch.status)
            finally:
                self._scratch.give(scratch)
        return lambda total_sum, run=None: split.finish_sum(run_finish, total_sum, run)

    def _chunk_parts(self, entry, function, *, prepared, flat, training, seed, step, offset, threads, site_data,
                     scores, total: int, out=None) -> list[tuple]:
        """(samples, mean loss, gradient, tape bytes, scores) of each chunk of `prepared`, whose first
        sample is sample `offset` of a batch of `total`: when that batch has several chunks, each
        chunk's gradient is weighted by its share of the batch, in a buffer of the pool (of a split
        kernel, the gradient then its hoisted values' adjoints: `_finisher` makes the gradient)."""
        data = site_data if site_data is not None else NO_DATA
        size = entry.get("grad_size", self._flat.size)
        per_call = entry.get("chunk", calls.CHUNK)  # (libraries built before `chunk`: CHUNK)
        pooled = total > per_call  # each chunk's gradient is a buffer of the pool, reused
        if out is not None and (out.size != size or out.dtype != self._float):
            out = None
        flat_address = self._flat_address if flat is self._flat else calls.address(flat)
        data_address = NO_DATA_ADDRESS if data is NO_DATA else calls.address(data)
        float_type = self._float
        split = self._split(entry, total)
        hoisted = None
        if split is not None:
            hoist, chunk_function = split.parts(prepared.n)
            hoisted = self._buffers.take(split.adjoint_size, float_type)
            adjoints_at = size * hoisted.itemsize
            size += split.adjoint_size
            scratch = self._scratch.take()
            try:
                code = hoist(flat_address, scratch.workspace(entry["workspace"]), scratch.status_address,
                             calls.address(hoisted))
                self._raise_on_failure(code, prepared.batched, entry["checks"], scratch.status)
            finally:
                self._scratch.give(scratch)
            hoisted_address = calls.address(hoisted)

            def function(*arguments):
                return chunk_function(*arguments, hoisted_address, arguments[GRADS_ARGUMENT] + adjoints_at)

        def chunk(start: int, stop: int):
            grads = (self._buffers.take(size, float_type) if pooled else
                     out if out is not None else np.empty(size, dtype=float_type))
            score_buffer = NO_DATA if scores is None else np.zeros_like(scores)
            score_address = NO_DATA_ADDRESS if scores is None else calls.address(score_buffer)
            scratch = self._scratch.take()
            try:
                scratch.words[1] = 0
                code = function(flat_address, *prepared.chunk(start), stop - start, int(offset) + start,
                                int(bool(training)), int(seed) & _U64, int(step) & _U64, scratch.loss_address,
                                calls.address(grads), data_address, score_address, scratch.stored_address,
                                scratch.workspace(entry["workspace"]), scratch.status_address)
                self._raise_on_failure(code, prepared.batched, entry["checks"], scratch.status)
                if pooled:
                    np.multiply(grads, float_type((stop - start) / total), out=grads)
                return stop - start, scratch.loss(float_type), grads, int(scratch.words[1]), score_buffer
            finally:
                self._scratch.give(scratch)

        try:
            return calls.run_chunks(chunk, prepared.n, threads, per_call)
        finally:
            if hoisted is not None:
                self._buffers.give(hoisted)

    def _combined(self, chunks: list[tuple[int, float, int]], known: dict, n: int, out=None, finish=None,
                  run: slice | None = None):
        """(mean loss, gradient, tape bytes) of a batch of `n` from its chunks' (samples, mean loss,
        tape bytes), in chunk order, and the sums `known` of their weighted gradients (the leaves, or
        nodes of the tree, spadrt/reduction.py), which are consumed; `finish` (`_finisher`'s) makes
        the gradient of their sum (with `run`, of that run of it). One chunk's mean loss is the
        batch's as it is (weighting it by n / n could round it). The gradient is `out` when it fits,
        else the tree's sum itself where it is writable (no copy: a copy would hold the gradient
        twice at the peak)."""
        loss = chunks[0][1] if len(chunks) == 1 else sum(part_loss * count for count, part_loss, _ in chunks) / n
        stored = sum(part[2] for part in chunks)
        root = reduction.tree_sum(0, len(chunks), known)
        if finish is not None:
            root = finish(root, run)
        if out is not None and out.size == root.size and out.dtype == self._float:
            np.copyto(out, root)
            return loss, out, stored
        if root.flags.writeable and root.dtype == self._float:
            return loss, root, stored
        return loss, root.astype(self._float), stored

    def _params_buffer(self, params) -> np.ndarray:
        """The flat params a call reads: the model's own, or a `params=` override (the caller keeps
        the returned array alive for the call)."""
        return self._flat if params is None else self._flat_params(params)

    # ---- plumbing ----------------------------------------------------------------------

    def _dtype(self, dtype: str):
        return self._float if dtype == "f64" else _NUMPY[dtype]

    def _inputs(self, values: dict, state: dict | None = None, extra: list[dict] = ()) -> Prepared:
        """The inputs as kernel arguments; `extra`: specs of a kernel's own inputs after the model's."""
        layout = dict(self.layout, inputs=self.layout["inputs"] + list(extra)) if extra else self.layout
        return prepare(layout, with_state(self.layout, values, state), self._dtype)

    def _raise_on_failure(self, code: int, batched: bool, checks: list[dict], status: np.ndarray):
        if code == 0:
            return
        check = checks[code - 1]
        place = _Place(check["file"], check["line"], check["col"], check["source_line"])
        # A check of the part computed once per call (spadc/backend/hoisting.py) names no sample.
        where = "" if not batched else f" (sample {status[2]})" if status[2] >= 0 else " (in the part computed once per call)"
        raise SpadcError(f"run-time error{where}: {check['message'].format(value=int(status[1]))}", place)
