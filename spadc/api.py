"""The Python API of INTERFACE.md: `compile_file` and `compile_source` give a `spadrt.Model`.

Invariants:
- Compilation is cached by source, name and options (and the checked IR, which captures imported
  files), so compiling the same model again in one process costs only the front end. The cache
  keeps the CACHE_SIZE most recently used models, so a long process does not grow without bound.
- `compile_file` and `compile_source` also use the disk cache (spadc/cache.py): a model whose
  kernels are there loads them without running the front end or LLVM; a gradient variant not
  there is compiled (front end included) the first time it is asked for, and stored.
- Building plans the exact gradient (its tape and memory plan, which the layout reports) and emits
  its LLVM IR, but compiles no kernel: each kernel, the exact gradient as much as an estimator's
  sampled adjoint or the forward kernel, is compiled the first time it is run, and cached with the
  model. A gradient program asked for itself (`spadc ir`, `spadc mem`) is planned, not compiled.
"""

from __future__ import annotations

import gc
import json
import os
import warnings
from contextlib import contextmanager
from collections import OrderedDict
from dataclasses import dataclass, field

from llvmlite import ir

from spadrt import Model, limits, split_kernels
from spadrt.estimators import SamplingWarning, variant_key

from . import cache, derived_kernels, frontend
from .ad.paths import multi_factor_paths
from .ad.tape import plan_tape
from .ad import vjp
from .ad.reverse import GradientProgram
from .backend import budget, jit, kernels, tiers
from .errors import Source, SpadcError
from .ir.printer import format_program

DTYPES = ("f64", "f32")


@dataclass
class Compiled:
    """Everything compilation produced for one model, kept for inspection (`spadc llvm`, `spadc ir`)."""
    program: object
    gradient: GradientProgram  # the exact one
    llvm_ir: str  # the module of the exact gradient kernel, before optimisation
    layout: dict
    dtype: str
    max_memory: int  # bytes: no kernel's workspace may need more
    lanes: int  # samples every kernel runs side by side (the particles kernel excepted)
    base_layout: dict  # the layout with the exact gradient only (what the disk cache keeps)
    split: object = None  # what the forward and exact kernels compute once per call (spadc/passes/hoist.py)
    checkpoint: object = "auto"  # "auto" | "none" | snapshots: how gradient kernels meet max_memory (budget.py)
    # compiled: (entry, machine code: a jit.Compiled or a tiers.Tiered, gradient program)
    variants: dict[str, tuple[dict, object, GradientProgram]] = field(default_factory=dict)
    emitted: dict[str, tuple[dict, str, GradientProgram]] = field(default_factory=dict)  # planned, LLVM IR

    def kernel(self, kind: str, on_optimised=None) -> tuple[dict, object]:
        """(layout entry, machine code: see `tiers.compile_kernel`) of one of the EXTRA_KERNELS,
        compiled on first use: the forward kernel with a parameter vector per particle (ES and
        PES), or a product kernel (CURVATURE.md section 1: `jvp`, `hvp`, `ggn`)."""
        if kind not in self.variants:
            module = ir.Module(name=f"{self.program.name}.{kind}")
            entry = derived_kernels.build(self, module, kind)
            code = tiers.compile_kernel(str(module), (kind,), entry["sample_work"], on_optimised)
            self.variants[kind] = (entry, code, None)
        entry, machine, _ = self.variants[kind]
        return entry, machine

    def function_ir(self, kind: str) -> str:
        """The LLVM IR, before optimisation, of the exact gradient kernel (`grad`) or of one of the
        EXTRA_KERNELS (`forward`...), emitted for the asking (nothing is compiled)."""
        if kind == "grad":
            return self.llvm_ir
        module = ir.Module(name=f"{self.program.name}.{kind}")
        derived_kernels.build(self, module, kind)
        return str(module)

    def gradient_program(self, sampling=None, score: str | None = None, policy=None) -> GradientProgram:
        return self.emit(sampling, score, policy)[2]

    def variant(self, sampling=None, score: str | None = None, policy=None, on_optimised=None, seeded=()):
        """(layout entry, machine code, gradient program) of a gradient variant, compiled on first
        use (`tiers.compile_kernel`: `on_optimised` is told of its optimised code)."""
        key = variant_key(sampling, score, policy, seeded)
        if key not in self.variants:
            entry, llvm_ir, program = self.emit(sampling, score, policy, seeded)
            self.variants[key] = (entry, tiers.compile_kernel(llvm_ir, split_kernels.functions(entry),
                                                              entry["sample_work"], on_optimised),
                                  program)
        return self.variants[key]

    def emit(self, sampling=None, score: str | None = None, policy=None,
             seeded: tuple[str, ...] = ()) -> tuple[dict, str, GradientProgram]:
        """(layout entry, LLVM IR, gradient program) of a gradient variant: planned and emitted, not
        compiled. With `seeded` outputs, of the VJP's surrogate `sum_k <ct_k, out_k>` (its
        cotangents inputs after the model's) in place of the loss."""
        key = variant_key(sampling, score, policy, seeded)
        if key not in self.emitted:
            def differentiate(program):
                return budget.differentiated(program, sampling=sampling, score=score, policy=policy)
            objective = vjp.surrogate(self.program, seeded) if seeded else self.program
            program, plan = budget.plan_gradient(objective, self.max_memory, self.checkpoint, differentiate,
                                                 _float_bytes(self.dtype))
            # Cut, the variant runs as many lanes as taped unless the budget holds fewer: with other
            # lanes a sampled gradient can round otherwise (RAD's sums over lanes), and checkpointed
            # gradients keep the taped ones' bits (the fuzzer's seed 1200864: 1 lane against 128).
            lanes = kernels.lanes_within(program, self.dtype, self.max_memory, self.lanes) if plan.cuts else self.lanes
            module = ir.Module(name=f"{self.program.name}.{key}")
            entry = kernels.grad_kernel(module, program, self.layout, self.dtype, "grad", self.max_memory, lanes=lanes)
            entry.update(plan.as_layout())
            if sampling is not None:
                exact = self.emit(None, seeded=seeded)[2] if seeded else self.gradient
                entry["warnings"] = _sampling_warnings(objective, program, sampling, plan.taped_tape,
                                                       plan_tape(exact).static_bytes)
            self.emitted[key] = (entry, str(module), program)
            self.layout["variants"][key] = entry
        return self.emitted[key]


KEEPS_MOST = 0.9  # of the exact tape: an estimator keeping more is warned about (ESTIMATORS.md section 9)


def _sampling_warnings(source, program: GradientProgram, sampling, sampled_tape: float, exact_tape: float) -> list[str]:
    """What a user of a sampled gradient should know: params whose paths cross several random
    factors; a policy with no site worth gating; an estimator keeping most of the exact tape."""
    warnings_ = [f"param `{param}` has a path to the loss through {len(sites)} random factors "
                 f"({'; '.join(sites)}): the variance of its estimate grows with depth"
                 for param, sites in multi_factor_paths(source, program.sites)]
    left = (f"; {len(program.ungated)} of its sites are left exact because gating them would save nothing "
            f"(`spadc mem` says why)") if program.ungated else ""
    if not program.sites:
        wider = {"weights": "the `products` or `edges` policy", "products": "the `edges` policy"}
        hint = f"try {wider[sampling.sites]}" if sampling.sites in wider else "no policy gates more"
        warnings_.append(f"this model has no site to gate under the `{sampling.sites}` site policy{left}: the estimate "
                         f"is the exact gradient, with its memory ({hint})")
    elif exact_tape and sampled_tape > KEEPS_MOST * exact_tape:
        warnings_.append(f"under the `{sampling.sites}` site policy this estimator keeps "
                         f"{100 * sampled_tape / exact_tape:.0f}% of the exact tape ({sampled_tape:,.0f} of "
                         f"{exact_tape:,.0f} bytes per sample), so it adds noise for little memory: its sites "
                         f"hold little of the tape (a gated input costs none either way), or keep {sampling.keep} "
                         f"is near 1 (`spadc mem` shows each site's bytes){left}")
    return warnings_


CACHE_SIZE = 32  # compiled models kept for reuse; older ones are freed once no Model holds them
_CACHE: OrderedDict[tuple, Compiled] = OrderedDict()


def compile_file(path: str, dtype: str = "f64", max_memory=None, cache: bool = True, lanes: int | None = None,
                 checkpoint="auto") -> Model:
    """`max_memory`: bytes (or "4G") that params and a kernel's workspace may take (spadrt.limits).
    `cache`: use the on-disk cache of compiled kernels (spadc/cache.py). `lanes`: samples each
    kernel runs side by side (more: faster at batch, a workspace that many times larger; 1: the
    least memory); default: one for a model without matrix products, else up to 128 (16 where the
    params take at most 128 KB), fewer when the workspace would pass 4 MB or the memory limit.
    `checkpoint`: how a gradient whose tape passes `max_memory` is made to fit
    (spadc/backend/budget.py): "auto" (replay loop segments, as few times as fits), "none"
    (refuse), or a number of snapshots per long loop."""
    source = frontend.read_source(path)
    return _model(source, frontend.source_directory(source), dtype, max_memory, cache, lanes, checkpoint)


def build_file(path: str, dtype: str = "f64", max_memory=None, lanes: int | None = None,
               checkpoint="auto") -> Compiled:
    source = frontend.read_source(path)
    return build(source, frontend.source_directory(source), dtype, max_memory, lanes, checkpoint)


def compile_source(text: str, name: str = "m", dtype: str = "f64", max_memory=None, cache: bool = True,
                   lanes: int | None = None, checkpoint="auto") -> Model:
    return _model(frontend.text_source(text, name), os.getcwd(), dtype, max_memory, cache, lanes, checkpoint)


def build(source: Source, base_dir: str, dtype: str = "f64", max_memory=None, lanes: int | None = None,
          checkpoint="auto") -> Compiled:
    with _collector_paused():
        return _build(source, base_dir, dtype, max_memory, lanes, budget.check_option(checkpoint))


@contextmanager
def _collector_paused():
    """Python's cycle collector off while compiling: the front end and llvmlite make many small
    objects and no cycles worth collecting mid-way (4% of mlp_digits' cold compile went to it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _float_bytes(dtype: str) -> int:
    return 8 if dtype == "f64" else 4


def _build(source: Source, base_dir: str, dtype: str, max_memory, lanes: int | None, checkpoint) -> Compiled:
    _check_dtype(dtype)
    _check_lanes(lanes)
    from .check.program import check_source
    limit = limits.max_memory(max_memory)
    program = frontend.lower(check_source(source, base_dir, limit))
    exact = budget.differentiated(program)
    key = (source.name, source.text, dtype, limit, lanes, checkpoint, format_program(program),
           format_program(exact.program))
    if key not in _CACHE:
        _, split, plan, lanes, module, entry = budget.plan_exact(program, exact, dtype, limit, lanes, checkpoint,
                                                                 program.name)
        layout, _ = kernels.base_layout(program, dtype)
        entry.update(plan.as_layout())
        layout["variants"]["exact"] = entry
        base_layout = json.loads(json.dumps(layout))
        llvm_ir = str(module)
        compiled = Compiled(program, exact, llvm_ir, layout, dtype, limit, lanes, base_layout, split, checkpoint)
        compiled.emitted["exact"] = (entry, llvm_ir, exact)
        _CACHE[key] = compiled
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _check_dtype(dtype: str):
    if dtype not in DTYPES:
        raise SpadcError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


LANES_LIMIT = 256  # what `lanes=` accepts


def _check_lanes(lanes):
    if lanes is not None and (isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= LANES_LIMIT):
        raise SpadcError(f"lanes must be an integer from 1 to {LANES_LIMIT} (or None: chosen by size), got {lanes!r}")


def _model(source: Source, base_dir: str, dtype: str, max_memory, use_cache: bool, lanes: int | None = None,
           checkpoint="auto") -> Model:
    """A model from the disk cache when it holds this source's kernels; else compiled (and stored)."""
    _check_dtype(dtype)
    _check_lanes(lanes)
    checkpoint = budget.check_option(checkpoint)
    limit = limits.max_memory(max_memory)

    def replan(max_memory_, checkpoint_) -> Model:  # `grad(max_memory=, checkpoint=)`: the model under another plan
        return _model(source, base_dir, dtype, limit if max_memory_ is None else max_memory_, use_cache, lanes,
                      checkpoint if checkpoint_ is None else checkpoint_)

    def library(estimator, entries) -> tuple[bytes, dict]:  # what a cluster's workers load (spadc/cluster.py)
        from .aot import host_library
        return host_library(source, base_dir, dtype, limit, lanes, checkpoint, estimator, entries)

    if not use_cache:
        return model_of(build(source, base_dir, dtype, limit, lanes, checkpoint), replan=replan, library=library)
    base_key = cache.key(source, base_dir, dtype, limit, lanes, checkpoint)
    hit = cache.load(base_key)
    if hit is None:
        compiled = build(source, base_dir, dtype, limit, lanes, checkpoint)
        cache.store(base_key, compiled.base_layout, b"", cache.file_digests(compiled.program.files))
        return model_of(compiled, base_key, replan, library)
    layout, _ = hit  # the model's layout; each kernel is an entry of its own
    built = []

    def compiled_later() -> Compiled:  # only when a kernel is not in the cache either
        if not built:
            built.append(build(source, base_dir, dtype, limit, lanes, checkpoint))
        return built[0]

    return _assemble(layout, compiled_later, base_key, replan, library)


def model_of(compiled: Compiled, base_key: str | None = None, replan=None, library=None) -> Model:
    return _assemble(compiled.layout, lambda: compiled, base_key, replan, library)


def _assemble(layout: dict, compiled_of, base_key: str | None, replan=None, library=None) -> Model:
    """A Model whose kernels come from the disk cache (with a `base_key`) or are compiled on first use."""

    def provide(sampling, score, policy, seeded=()):
        """Called once per model and variant: the place to warn about the variant."""
        key = variant_key(sampling, score, policy, seeded)

        def made(compiled, on_optimised):
            return compiled.variant(sampling, score, policy, on_optimised, seeded)[:2]

        entry, code = _kernel_code(cache.variant_key(base_key, key) if base_key else None, "grad", compiled_of,
                                   made, lambda compiled: compiled.emit(sampling, score, policy, seeded)[1])
        layout["variants"][key] = entry
        for message in entry.get("warnings", ()):
            warnings.warn(message, SamplingWarning, stacklevel=5)
        return entry, code.addresses["grad"], code

    def provide_kernel(kind: str):
        """One of the extra kernels (particles, products): (layout entry, address, owner)."""
        entry, code = _kernel_code(cache.variant_key(base_key, kind) if base_key else None, kind, compiled_of,
                                   lambda compiled, on_optimised: compiled.kernel(kind, on_optimised),
                                   lambda compiled: compiled.function_ir(kind))
        return entry, code.addresses[kind], code

    return Model(layout, None, provide, kernel_provider=provide_kernel, replan=replan, library=library)


QUICK_ENTRY = "~quick"  # a cache entry's key with this after it: the kernel's quick code (spadc/backend/tiers.py)


def _kernel_code(entry_key: str | None, function: str, compiled_of, made, emitted) -> tuple[dict, object]:
    """(layout entry, machine code) of one kernel: its optimised code from the disk cache; else, unless
    the policy is `optimised`, its quick code from there (under `tiered`, optimised and stored once
    it has run enough); else made by `made(compiled, on_optimised)` and stored. `emitted(compiled)`:
    its LLVM IR."""
    def store(key, entry, code):
        cache.store(key, entry, code.object_code, cache.file_digests(compiled_of().program.files))

    hit = cache.load(entry_key) if entry_key else None
    if hit is not None:
        return hit[0], jit.load_object(hit[1], split_kernels.functions(hit[0], function))
    policy = tiers.policy()
    hit = cache.load(entry_key + QUICK_ENTRY) if entry_key and policy != "optimised" else None
    if hit is not None:
        entry, quick = hit[0], jit.load_object(hit[1], split_kernels.functions(hit[0], function))
        if policy == "quick":
            return entry, quick
        return entry, tiers.Tiered(quick, split_kernels.functions(entry, function), entry["sample_work"],
                                   lambda: emitted(compiled_of()),
                                   lambda optimised: store(entry_key, entry, optimised))
    if not entry_key:
        return made(compiled_of(), None)
    entry, code = made(compiled_of(), lambda optimised: store(entry_key, entry, optimised))
    store(entry_key if policy == "optimised" else entry_key + QUICK_ENTRY, entry, code)
    return entry, code
