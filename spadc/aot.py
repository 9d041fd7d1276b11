"""Ahead-of-time builds: `spadc build FILE.spad -o model.so | model.o [--header model.h]`.

One object holds, for a model named NAME (the file's base name):
    NAME_forward, NAME_grad_<v> and NAME_train_step_<v> for each gradient variant v (exact, rad,
    spad, spad_scores), NAME_layout() (the layout as JSON) and NAME_abi_version();
    with `--entry vjp`: NAME_vjp (per sample: the outputs and the float inputs' cotangents, seeded
    by the cotangents of the loss and of every float output, passed after the inputs; NAME_vjp_rad
    the same under RAD) and
    NAME_grad_vjp_<v> (the params' cotangents, summed as a gradient: one per gradient variant);
    with `--entry jacobian`: NAME_jacobian_<output>_params and NAME_jacobian_<output>_inputs for
    the loss and each float output (the kernels the JIT runs: spadrt/derivatives.py);
    with `--entry particles`: NAME_particles (the forward kernel with a parameter vector per
    particle: what ES and PES evaluate, spadrt/es.py);
NAME_layout_digest() (the layout's digest, in code); and a shared library also `spadrt_layout`,
`spadrt_abi_version` and `spadrt_layout_digest`, which `spadrt.load` reads and checks.

Invariants:
- The kernels are the JIT's, compiled with the same pipeline: for the host target and CPU, a built
  library gives the JIT's results to the last bit.
- Generated code calls no allocator: the caller passes the workspace (the tape), whose size per
  kernel the header and the layout state. It calls libm for transcendental functions.
- The system C compiler is used only to link a shared library; LLVM emits the object code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

import llvmlite.binding as llvm
from llvmlite import ir

from dataclasses import dataclass

from spadrt import derivatives, limits
from spadrt.abi import ABI_VERSION
from spadrt.estimators import RAD, SPAD, variant_key
from spadrt.files import atomic_write, check_writable, path_argument
from spadrt.library import layout_digest

from . import derived_kernels, frontend
from .check.program import check_source
from .ad import vjp
from contextlib import nullcontext

from .backend import budget, jit, kernels
from .backend.target import for_target
from .backend.codegen import I64
from .errors import SpadcError

TARGETS = {  # the triples tests and docs promise; any LLVM triple is accepted
    "x86_64-linux-gnu": "x86_64-unknown-linux-gnu",
    "aarch64-linux-gnu": "aarch64-unknown-linux-gnu",
    # LLVM reads a three-part "arch-none-env" as an OS named after the environment, and so would
    # build the soft-float ABI for "eabihf": the four parts say what is meant.
    "thumbv7em-none-eabihf": "thumbv7em-unknown-none-eabihf",
    "riscv32-unknown-elf": "riscv32-unknown-elf",
}
# Features a target's name implies when no --cpu is given: "eabihf" passes floats in FPU registers,
# so there is an FPU, at least the single-precision VFPv4 (D16) of every Cortex-M4F and M7.
TARGET_FEATURES = {"thumbv7em-none-eabihf": "+vfp4d16sp"}
ESTIMATOR_NAMES = ("exact", "rad", "spad")
ENTRY_NAMES = ("vjp", "jacobian", "particles")  # kernels a build may add (`--entry`) beside forward and the gradients


def variants(estimators, keep: float, policy: str, draw: str, share: str) -> list[tuple[str, object, str | None, str | None]]:
    """(symbol suffix, sampling, score, site policy) of each gradient kernel a build includes."""
    chosen = [("exact", None, None, None)]
    if "rad" in estimators:
        chosen.append(("rad", RAD(keep=keep, policy=policy, draw=draw, share=share).sampling, None, None))
    if "spad" in estimators:
        spad = SPAD(keep=keep, sites=policy, draw=draw, share=share)
        chosen.append(("spad", spad.sampling, None, None))
        chosen.append(("spad_scores", spad.evaluation_sampling, "paths", None))  # SPAD's default scores
    return [v for v in chosen if v[0] == "exact" or v[1] is not None or v[2] is not None]


def build(path: str, output: str, header: str | None = None, target: str | None = None, cpu: str | None = None,
          dtype: str = "f64", estimators=ESTIMATOR_NAMES, keep: float = 0.1, policy: str = "weights",
          draw: str = "with_replacement", share: str = "sample", linker: str | None = None, max_memory=None,
          checkpoint="auto", entries=()) -> dict:
    """Build `output` (.so or .o) and optionally a C header; returns the layout. A shared library for
    another target needs that target's linker (`linker`, a C compiler driver). `max_memory` and
    `checkpoint`: the gradient kernels' budget, as for compile_file."""
    path, output = path_argument(path, "the source file"), path_argument(output, "the output path")
    header = None if header is None else path_argument(header, "the header path")
    if not output.endswith((".so", ".o")):
        raise SpadcError(f"-o must name a shared library (.so) or an object file (.o), got {output!r}")
    if output.endswith(".so") and target is not None and linker is None:
        raise SpadcError(f"a shared library for {target} must be linked by that target's linker: build an object "
                         f"instead (-o {output[:-3]}.o) and link it with your toolchain, or give one with --linker "
                         f"(for example --linker {target}-gcc)")
    unknown = set(estimators) - set(ESTIMATOR_NAMES)
    if unknown:
        raise SpadcError(f"unknown estimator {sorted(unknown)[0]!r}; expected {', '.join(ESTIMATOR_NAMES)}")
    unknown = set(entries) - set(ENTRY_NAMES)
    if unknown:
        raise SpadcError(f"unknown entry {sorted(unknown)[0]!r}; expected {', '.join(ENTRY_NAMES)}")
    for target_path, what in ((output, "output"), (header, "header")):
        if target_path:
            check_writable(target_path, what)
    shared = output.endswith(".so")
    # For the host: the JIT's code; for another target, no FMA and no 128-bit multiply assumed.
    with for_target(fused=False, wide=False) if target is not None else nullcontext():
        module, layout, prefix = kernels_module(path, dtype, estimators, keep, policy, draw, share, shared,
                                                native=target is None, max_memory=max_memory, checkpoint=checkpoint,
                                                entries=entries)
    machine = _target_machine(target, cpu)
    optimised = jit.optimise(str(module), machine)
    _write(output, machine.emit_object(optimised), shared, linker)
    if header:
        with atomic_write(header, "header") as f:
            f.write(c_header(layout, prefix, os.path.basename(path), dtype).encode("utf-8"))
    return layout


def host_library(source, base_dir: str, dtype: str, max_memory, lanes: int | None, checkpoint, estimator=None,
                 entries=()) -> tuple[bytes, dict]:
    """(the bytes of a shared library for this host, its layout) of a model compiled from `source`
    with compile_file's options: the kernels the JIT runs, bit for bit, with the gradient variants of
    `estimator` (Exact, RAD, or SPAD with its default scores) and the derived kernels of `entries`.
    What a cluster's workers load (spadc/cluster.py)."""
    settings = {"estimators": ("exact",)}
    if isinstance(estimator, (RAD, SPAD)) and estimator.sampling is not None:
        sites = estimator.sites if isinstance(estimator, SPAD) else estimator.policy
        settings = dict(estimators=("exact", estimator.name), keep=estimator.keep, draw=estimator.draw,
                        share=estimator.share, policy=sites)
    module, layout, _ = kernels_module(None, dtype, shared=True, max_memory=max_memory, checkpoint=checkpoint,
                                       entries=entries, source=(source, base_dir), lanes=lanes, **settings)
    machine = _target_machine(None, None)
    object_code = machine.emit_object(jit.optimise(str(module), machine))
    with tempfile.TemporaryDirectory(prefix="spadc-library-") as directory:
        output = os.path.join(directory, "model.so")
        _write(output, object_code, True, None)
        with open(output, "rb") as f:
            return f.read(), layout


def kernels_module(path: str | None, dtype: str = "f64", estimators=ESTIMATOR_NAMES, keep: float = 0.1,
                   policy: str = "weights", draw: str = "with_replacement", share: str = "sample",
                   shared: bool = False, native: bool = True, max_memory=None,
                   checkpoint="auto", entries=(), source=None, lanes: int | None = None) -> tuple[ir.Module, dict, str]:
    """(the LLVM module of every kernel of a build, its layout, the symbols' prefix). For the host
    (`native`), kernels run as many lanes as the JIT's (`lanes`: as compile_file's) and hoist what
    it hoists, so that their results are the JIT's bit for bit; for another target, one lane (the
    least memory) and nothing hoisted. Every gradient kernel is planned to the budget as the JIT's
    are (spadc/backend/budget.py). `source`: (Source, directory of its imports) in place of `path`."""
    checkpoint = budget.check_option(checkpoint)
    limit = limits.max_memory(max_memory)
    program = frontend.lower(frontend.check_file(path) if source is None else check_source(*source, limit))
    prefix = _identifier(program.name)
    module = ir.Module(name=program.name)
    layout, outputs = kernels.base_layout(program, dtype)
    asked_lanes, lanes, split, exact_plan = lanes, 1, None, None
    if native:  # as the JIT: lanes, and what depends on params alone once per call (memory for time)
        exact_plan = budget.plan_exact(program, budget.differentiated(program), dtype, limit, asked_lanes, checkpoint)
        split, lanes = exact_plan[1], exact_plan[3]
    layout["forward"] = kernels.forward_kernel(module, program, layout, outputs, dtype, f"{prefix}_forward",
                                               limit, lanes=lanes, split=split)
    chosen = variants(estimators, keep, policy, draw, share)
    for suffix, sampling, score, site_policy in chosen:
        if sampling is None and score is None and exact_plan is not None:
            program_of_variant, hoisted, plan = exact_plan[:3]
            entry = kernels.grad_kernel(module, program_of_variant, layout, dtype, f"{prefix}_grad_{suffix}", limit,
                                        lanes=lanes, split=hoisted)
            entry.update(plan.as_layout())
        else:  # sampled paths: the program as written
            entry = _gradient_variant(module, program, layout, dtype, f"{prefix}_grad_{suffix}", limit, checkpoint,
                                      lanes, sampling, score, site_policy)
        entry["train_step"] = _train_step(module, entry["symbol"], f"{prefix}_train_step_{suffix}", layout, dtype)
        layout["variants"][variant_key(sampling, score, site_policy)] = entry
    layout["kernels"] = {}  # by kind: the derived kernels of `entries`
    built = _Build(program, layout, dtype, limit, lanes)
    if "vjp" in entries:
        seeded = tuple(sorted(derivatives.seedable(layout)))
        exact = derivatives.vjp_kind(seeded, None)
        layout["kernels"][exact] = derived_kernels.build(built, module, exact, f"{prefix}_vjp")
        if "rad" in estimators and keep < 1:  # RAD samples the inputs' cotangents too
            rad = RAD(keep=keep, policy=policy, draw=draw, share=share)
            kind = derivatives.vjp_kind(seeded, rad)
            layout["kernels"][kind] = derived_kernels.build(built, module, kind, f"{prefix}_vjp_rad")
        objective = vjp.surrogate(program, seeded)
        for suffix, sampling, score, site_policy in chosen:
            entry = _gradient_variant(module, objective, layout, dtype, f"{prefix}_grad_vjp_{suffix}", limit, checkpoint,
                                      lanes, sampling, score, site_policy)
            layout["variants"][variant_key(sampling, score, site_policy, seeded)] = entry
    if "jacobian" in entries:
        for output in sorted(derivatives.seedable(layout)):
            for side, present in ((derivatives.PARAMS, layout["params"]),
                                  (derivatives.INPUTS, derivatives.float_inputs(layout))):
                if present:
                    kind = derivatives.jacobian_kind(layout, output, side)[2]
                    symbol = f"{prefix}_jacobian_{_identifier(output)}_{side.lstrip('*')}"
                    layout["kernels"][kind] = derived_kernels.build(built, module, kind, symbol)
    if "particles" in entries:
        layout["kernels"][derived_kernels.PARTICLES] = derived_kernels.build(built, module, derived_kernels.PARTICLES,
                                                                             f"{prefix}_particles")
    text = json.dumps(layout)
    _metadata(module, prefix, text)
    if shared:
        _metadata(module, "spadrt", text)
    return module, layout, prefix


@dataclass(frozen=True)
class _Build:
    """What derived_kernels.build reads of a build (the JIT's `Compiled` has the same fields)."""
    program: object
    layout: dict
    dtype: str
    max_memory: int | None
    lanes: int


def _gradient_variant(module, objective, layout: dict, dtype: str, symbol: str, limit, checkpoint, lanes: int,
                      sampling, score, site_policy) -> dict:
    """A gradient kernel of `objective` (the model, or a VJP's surrogate) planned to the budget, the
    program as written (as the JIT's `Compiled.emit`), with as many lanes as that gives."""
    program, plan = budget.plan_gradient(
        objective, limit, checkpoint,
        lambda p: budget.differentiated(p, sampling=sampling, score=score, policy=site_policy),
        8 if dtype == "f64" else 4)
    lanes = kernels.lanes_within(program, dtype, limit, lanes) if plan.cuts else lanes
    entry = kernels.grad_kernel(module, program, layout, dtype, symbol, limit, lanes=lanes)
    entry.update(plan.as_layout())
    return entry


def _identifier(name: str) -> str:
    identifier = re.sub(r"\W", "_", name)
    return identifier if identifier and not identifier[0].isdigit() else f"model_{identifier}"


def _target_machine(target: str | None, cpu: str | None):
    # Position-independent code for objects too: linkers build PIE executables by default.
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    native = target is None
    triple = llvm.get_process_triple() if native else TARGETS.get(target, target)
    try:
        chosen = llvm.Target.from_triple(triple)
    except RuntimeError as error:
        raise SpadcError(f"unknown target {target!r}: {error}") from None
    if native and cpu is None:  # exactly the JIT's machine, so that results match it bit for bit
        return chosen.create_target_machine(cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(),
                                            opt=3, reloc="pic", codemodel="default")
    features = TARGET_FEATURES.get(target, "") if cpu is None else ""
    return chosen.create_target_machine(cpu=cpu or "", features=features, opt=3, reloc="pic", codemodel="default")


def _write(output: str, object_code: bytes, shared: bool, linker: str | None):
    if not shared:
        with atomic_write(output, "object") as f:
            f.write(object_code)
        return
    with tempfile.TemporaryDirectory() as scratch:
        obj, linked = os.path.join(scratch, "model.o"), os.path.join(scratch, "model.so")
        with open(obj, "wb") as f:
            f.write(object_code)
        compiler = linker or os.environ.get("CC", "cc")
        try:
            result = subprocess.run([compiler, "-shared", "-o", linked, obj, "-lm"], capture_output=True, text=True)
        except FileNotFoundError:
            raise SpadcError(f"cannot link {output}: no C compiler `{compiler}` (set CC, or build a .o)") from None
        if result.returncode != 0:
            raise SpadcError(f"cannot link {output}: {result.stderr.strip()}")
        with open(linked, "rb") as f, atomic_write(output, "library") as out:
            out.write(f.read())


def _metadata(module, prefix: str, layout_json: str):
    """`const char *PREFIX_layout(void)`, `int64_t PREFIX_abi_version(void)` and
    `int64_t PREFIX_layout_digest(void)`."""
    data = bytearray(layout_json.encode("utf-8") + b"\0")
    string_type = ir.ArrayType(ir.IntType(8), len(data))
    text = ir.GlobalVariable(module, string_type, name=f"{prefix}_layout_json")
    text.global_constant = True
    text.linkage = "private"
    text.initializer = ir.Constant(string_type, data)
    getter = ir.Function(module, ir.FunctionType(ir.IntType(8).as_pointer(), []), name=f"{prefix}_layout")
    builder = ir.IRBuilder(getter.append_basic_block("entry"))
    builder.ret(builder.bitcast(text, ir.IntType(8).as_pointer()))
    version = ir.Function(module, ir.FunctionType(I64, []), name=f"{prefix}_abi_version")
    ir.IRBuilder(version.append_basic_block("entry")).ret(I64(ABI_VERSION))
    # The layout's digest as an immediate in the code: a layout edited in the file no longer matches.
    digest = ir.Function(module, ir.FunctionType(I64, []), name=f"{prefix}_layout_digest")
    ir.IRBuilder(digest.append_basic_block("entry")).ret(I64(_signed(layout_digest(layout_json.encode("utf-8")))))


def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


def _train_step(module, grad_symbol: str, symbol: str, layout: dict, dtype: str) -> str:
    """A kernel that takes one plain SGD step: the gradient kernel, then params -= lr * grads."""
    # entry: rc = grad(...); rc != 0 ? return rc : (for j: params[j] -= lr * grads[j]; return 0)
    grad = module.get_global(grad_symbol)
    float_type = kernels.float_type(dtype)
    arguments = list(grad.function_type.args)
    function = ir.Function(module, ir.FunctionType(I64, arguments[:8] + [float_type] + arguments[8:]), name=symbol)
    args = list(function.args)
    lr = args[8]
    forwarded = args[:8] + args[9:]
    b = ir.IRBuilder(function.append_basic_block("entry"))
    code = b.call(grad, forwarded)
    with b.if_then(b.icmp_signed("!=", code, I64(0))):
        b.ret(code)
    params, grads = args[0], args[10]
    head, body, done = (function.append_basic_block(n) for n in ("update.head", "update.body", "update.done"))
    entry = b.block
    b.branch(head)
    b.position_at_end(head)
    j = b.phi(I64, "j")
    j.add_incoming(I64(0), entry)
    b.cbranch(b.icmp_signed("<", j, I64(layout["param_count"])), body, done)
    b.position_at_end(body)
    at = b.gep(params, [j], inbounds=True)
    b.store(b.fsub(b.load(at), b.fmul(lr, b.load(b.gep(grads, [j], inbounds=True)))), at)
    j.add_incoming(b.add(j, I64(1)), body)
    b.branch(head)
    b.position_at_end(done)
    b.ret(I64(0))
    return symbol


def c_header(layout: dict, prefix: str, source: str, dtype: str) -> str:
    upper = prefix.upper()
    real = "double" if dtype == "f64" else "float"
    common = (f"const {upper}_real *params, void *const *inputs, const int64_t *input_strides, int64_t n, "
              f"int64_t sample_offset, int64_t training, uint64_t seed, uint64_t step")
    lines = [f"/* {prefix}.h: generated by `spadc build` from {source}. Do not edit. */",
             f"#ifndef SPAD_{upper}_H", f"#define SPAD_{upper}_H", "", "#include <stdint.h>", "",
             f"#define {upper}_ABI_VERSION {layout['abi']}", f"typedef {real} {upper}_real;", "",
             f"/* Parameters: one flat buffer of {upper}_PARAM_COUNT reals (offsets in reals, row-major shapes). */",
             f"#define {upper}_PARAM_COUNT {layout['param_count']}"]
    for p in layout["params"]:
        name = re.sub(r"\W", "_", p["name"]).upper()
        lines.append(f"#define {upper}_PARAM_{name}_OFFSET {p['offset']}  /* {p['name']}: {_shape(p['shape'])} */")
    lines += ["", "/* Inputs, in this order in `inputs` (one sample each; input_strides[k] bytes to the next). */"]
    for k, spec in enumerate(layout["inputs"]):
        name = re.sub(r"\W", "_", spec["name"]).upper()
        what = " (a state: pass the carried value, or its initial value on an episode's first call)" \
            if spec.get("state") else ""
        lines.append(f"#define {upper}_INPUT_{name} {k}  /* {spec['name']}: {_typed(spec, layout)}{what} */")
    lines += ["", "/* Outputs, in this order in `outputs` (each stacked over the samples). */"]
    for k, spec in enumerate(layout["outputs"]):
        name = re.sub(r"\W", "_", spec["name"]).upper()
        lines.append(f"#define {upper}_OUTPUT_{name.lstrip('_')} {k}  /* {spec['name']}: {_typed(spec, layout)} */")
    lines += ["", "/* Peak workspace of one kernel call in bytes (the tape and every temporary, placed by liveness),",
              "   64-byte aligned, one per kernel; the caller provides it. The tape: bytes kept per sample. */",
              f"#define {upper}_WORKSPACE_FORWARD {layout['forward']['workspace']}"]
    suffixes = {entry["symbol"].rsplit("_grad_", 1)[1]: entry for entry in layout["variants"].values()}
    for suffix, entry in suffixes.items():
        tag = suffix.upper()
        lines.append(f"#define {upper}_WORKSPACE_GRAD_{tag} {entry['workspace']}")
        lines.append(f"#define {upper}_TAPE_BYTES_GRAD_{tag} {int(round(entry['tape_bytes']))}  /* per sample */")
        lines.append(f"#define {upper}_SITE_DATA_GRAD_{tag} {max(entry['site_data_size'], 1)}  /* doubles */")
        lines.append(f"#define {upper}_SCORES_GRAD_{tag} {max(entry['score_size'], 1)}  /* doubles */")
    lines += ["", "/* Each kernel returns 0, or the number of the run-time check that failed (see the layout), with",
              "   status = {check, offending value, sample (-1: in the part computed once per call)}. Gradients are",
              "   the batch mean. */",
              f"int64_t {prefix}_forward({common}, {upper}_real *losses, void *const *outputs, void *workspace, "
              f"int64_t *status);"]
    for suffix, entry in suffixes.items():
        lines.append(f"int64_t {prefix}_grad_{suffix}({common}, {upper}_real *loss_mean, {upper}_real *grads, "
                     f"const double *site_data, double *scores, int64_t *stored, void *workspace, int64_t *status);")
        if "train_step" in entry:
            lines.append(f"int64_t {prefix}_train_step_{suffix}({common.replace('const ' + upper + '_real *params', upper + '_real *params')}, "
                         f"{upper}_real lr, {upper}_real *loss_mean, {upper}_real *grads, const double *site_data, "
                         f"double *scores, int64_t *stored, void *workspace, int64_t *status);")
    lines += _derived_declarations(layout, prefix, common)
    lines += [f"const char *{prefix}_layout(void);  /* the layout as JSON */",
              f"int64_t {prefix}_abi_version(void);", f"int64_t {prefix}_layout_digest(void);", "", f"#endif /* SPAD_{upper}_H */", ""]
    return "\n".join(lines)


def _derived_declarations(layout: dict, prefix: str, common: str) -> list[str]:
    """The VJP and Jacobian kernels of `--entry`: forward kernels whose `inputs` go on after the
    model's with their own (cotangents, directions), writing the outputs they list."""
    upper, lines = prefix.upper(), []
    own = len(layout["inputs"])
    for kind, entry in layout.get("kernels", {}).items():
        symbol, tag = entry["symbol"], entry["symbol"][len(prefix) + 1:].upper()
        if kind == derived_kernels.PARTICLES:
            lines += ["", f"/* {symbol}: the forward kernel over `evaluations` = particles x rows: evaluation s is data "
                      "row s % rows", "   (keyed as that row) with the params at params + (s / rows) * param_stride, "
                      "input k at", "   inputs[k] + (s % rows) * input_strides[k] + s * input_eval_strides[k] (a state "
                      "of each particle's own). */",
                      f"#define {upper}_WORKSPACE_{tag} {entry['workspace']}",
                      f"int64_t {symbol}({common.replace('int64_t n,', 'int64_t evaluations,')}, {upper}_real *losses, "
                      "void *const *outputs, void *workspace, int64_t *status, int64_t rows, int64_t param_stride, "
                      "const int64_t *input_eval_strides);"]
            continue
        if kind.startswith(derivatives.VJP):
            lines += ["", f"/* {symbol}: per sample, the outputs and the float inputs' cotangents of the VJP seeded by",
                      "   cotangents of the loss and of every float output, given after the inputs (zeros for any",
                      f"   not wanted). {prefix}_grad_vjp_<v> (above) takes the same inputs and sums the params'",
                      "   cotangents as a gradient: their mean over the samples. */"]
            extra = [derivatives.COTANGENT + name for name in sorted(derivatives.seedable(layout))]
        else:
            sweeps = int(kind.split(".")[2])
            lines += ["", f"/* {symbol}: per sample, {sweeps} Jacobian sweeps sharing one evaluation: "
                      "sweep b reads the one-hot", "   direction(s) NAME.b given after the inputs (the same for every "
                      "sample: stride 0) and writes the outputs NAME.b. */"]
            extra = [spec["name"] for spec in entry["inputs"]]
        for k, name in enumerate(extra):
            lines.append(f"#define {upper}_{tag}_INPUT_{_macro(name)} {own + k}  /* {name} */")
        for k, spec in enumerate(entry["outputs"]):
            lines.append(f"#define {upper}_{tag}_OUTPUT_{_macro(spec['name'])} {k}  /* {spec['name']}: "
                         f"{_typed(spec, layout)} */")
        lines.append(f"#define {upper}_WORKSPACE_{tag} {entry['workspace']}")
        lines.append(f"int64_t {symbol}({common}, {upper}_real *losses, void *const *outputs, void *workspace, "
                     "int64_t *status);")
    return lines


def _macro(name: str) -> str:
    return re.sub(r"\W", "_", name).strip("_").upper()


def _typed(spec: dict, layout: dict) -> str:
    """An input's or output's element type and shape as the caller stores them: reals in the build's dtype."""
    return (layout["dtype"] if spec["dtype"] == "f64" else spec["dtype"]) + _shape(spec["shape"])


def _shape(shape) -> str:
    return f"[{', '.join(map(str, shape))}]" if shape else ""
