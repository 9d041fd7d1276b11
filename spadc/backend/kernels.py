"""The compiled kernels' C ABI, and the layout the runtime needs to call them.

Two entry points per model, each looping over the samples of a batch inside compiled code:

    int64_t forward(const T *params, void *const *inputs, const int64_t *input_strides, int64_t n,
                    int64_t sample_offset, int64_t training, uint64_t seed, uint64_t step,
                    T *losses, void *const *outputs, void *workspace, int64_t *status);
    int64_t grad(const T *params, void *const *inputs, const int64_t *input_strides, int64_t n,
                 int64_t sample_offset, int64_t training, uint64_t seed, uint64_t step,
                 T *loss_mean, T *grads, void *workspace, int64_t *status);

T is double (or float with the f32 option). `params` and `grads` are flat buffers laid out as
`Layout.params` says. `inputs[k]` points at input k of sample 0, `input_strides[k]` bytes on to the
next sample (0: shared by all samples). `outputs[k]` receives output k of every sample, stacked.
`workspace` holds `Layout.workspace[kernel]` bytes, 64-byte aligned. A kernel returns 0, or the
1-based number of the run-time check that failed, with status = [check, offending value, sample].

Invariants:
- `grad` writes the mean loss and the mean gradient over the n samples; `forward` one loss each.
- Samples are keyed by `sample_offset + s`, so a batch split across calls gives the same bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from llvmlite import ir

from ..ad.reverse import GradientProgram
from ..ir.core import Program, Value
from .codegen import I64, Check, FunctionEmitter
from .memory import element_size, plan

ABI_VERSION = 1
I8P = ir.IntType(8).as_pointer()


@dataclass
class Layout:
    """Everything a caller needs to use the kernels; JSON-serialisable (for ahead-of-time builds)."""
    name: str
    abi: int
    dtype: str
    params: list[dict]  # name, shape, offset (in elements), size, init {kind, args}, bounds
    inputs: list[dict]  # name, shape, dtype
    outputs: list[dict]  # name, shape, dtype, hidden
    workspace: dict[str, int]  # kernel -> bytes
    tape_bytes: int  # per sample, exact reverse mode
    checks: list[dict]  # message, file, line, col, source_line
    classifier: dict | None = None  # {"logits": output name, "label": input name}
    param_count: int = field(init=False)

    def __post_init__(self):
        self.param_count = sum(p["size"] for p in self.params)

    def to_dict(self) -> dict:
        return asdict(self)


def build(program: Program, gradient: GradientProgram, dtype: str = "f64") -> tuple[ir.Module, Layout]:
    float_type = ir.DoubleType() if dtype == "f64" else ir.FloatType()
    float_bytes = 8 if dtype == "f64" else 4
    module = ir.Module(name=program.name)
    checks: list[Check] = []

    outputs = dict(program.outputs)
    classifier = None
    if program.classifier is not None:
        logits, label = program.classifier
        label_input = next((d.name for d in program.inputs if d.value is label), None)
        if label_input is not None:
            logits_name = next((n for n, v in outputs.items() if v is logits), None)
            if logits_name is None:
                logits_name = "_logits"
                outputs[logits_name] = logits
            classifier = {"logits": logits_name, "label": label_input}

    offsets, offset = {}, 0
    for decl in program.params:
        offsets[decl.name] = offset
        offset += decl.value.type.size

    forward_plan = plan(program, float_bytes)
    grad_plan = plan(gradient.program, float_bytes, frozenset(v.id for v in gradient.accumulators.values()))
    _forward(module, program, outputs, offsets, forward_plan, float_type, float_bytes, checks)
    _grad(module, gradient, offsets, grad_plan, float_type, checks)

    tape = sum(v.type.size * element_size(v.type.dtype, float_bytes) for v in gradient.tape)
    layout = Layout(
        name=program.name, abi=ABI_VERSION, dtype=dtype,
        params=[{"name": d.name, "shape": list(d.value.type.shape), "offset": offsets[d.name],
                 "size": d.value.type.size, "init": {"kind": d.init.kind, "args": _jsonable(d.init.args)},
                 "bounds": list(d.bounds) if d.bounds else None} for d in program.params],
        inputs=[{"name": d.name, "shape": list(d.value.type.shape), "dtype": d.value.type.dtype}
                for d in program.inputs],
        outputs=[{"name": n, "shape": list(v.type.shape), "dtype": v.type.dtype, "hidden": n.startswith("_")}
                 for n, v in outputs.items()],
        workspace={"forward": forward_plan.size, "grad": grad_plan.size},
        tape_bytes=tape,
        checks=[{"message": c.message, "file": c.loc.source.name, "line": c.loc.line, "col": c.loc.col,
                 "source_line": c.loc.source.line_text(c.loc.line)} for c in checks],
        classifier=classifier,
    )
    return module, layout


def _jsonable(args):
    return [a.tolist() if hasattr(a, "tolist") else a for a in args]


_COMMON = [("params", None), ("inputs", I8P.as_pointer()), ("input_strides", I64.as_pointer()), ("n", I64),
           ("sample_offset", I64), ("training", I64), ("seed", I64), ("step", I64)]


def _signature(module, name, float_type, tail):
    arguments = [(n, float_type.as_pointer() if t is None else t) for n, t in _COMMON] + tail
    function = ir.Function(module, ir.FunctionType(I64, [t for _, t in arguments]), name=name)
    for arg, (arg_name, _) in zip(function.args, arguments):
        arg.name = arg_name
    return {arg.name: arg for arg in function.args}, function


def _emitter(function, float_type, plan_, args, checks):
    e = FunctionEmitter(function, float_type, plan_, args["workspace"], args["status"], checks)
    e.options = {"training": args["training"], "seed": args["seed"], "step": args["step"]}
    return e


def _bind_sample(e, program: Program, inputs, args, offsets, s):
    """Point the program's params and the given inputs at this sample's data."""
    b = e.b
    e.sample = b.add(args["sample_offset"], s, name="sample")
    for decl in program.params:
        e.bind(decl.value, b.gep(args["params"], [I64(offsets[decl.name])], inbounds=True, name=decl.name))
    for k, decl in enumerate(inputs):
        base = b.load(b.gep(args["inputs"], [I64(k)]))
        stride = b.load(b.gep(args["input_strides"], [I64(k)]))
        e.bind(decl.value, b.gep(base, [b.mul(s, stride)], name=decl.name))


def _forward(module, program, outputs, offsets, plan_, float_type, float_bytes, checks):
    tail = [("losses", float_type.as_pointer()), ("outputs", I8P.as_pointer()), ("workspace", I8P),
            ("status", I64.as_pointer())]
    args, function = _signature(module, "forward", float_type, tail)
    e = _emitter(function, float_type, plan_, args, checks)
    b = e.b
    with e.loop(args["n"], "s") as s:
        _bind_sample(e, program, program.inputs, args, offsets, s)
        e.block(program.body)
        b.store(e.load(program.loss), b.gep(args["losses"], [s]))
        for k, value in enumerate(outputs.values()):
            size = value.type.size * element_size(value.type.dtype, float_bytes)
            base = b.load(b.gep(args["outputs"], [I64(k)]))
            target = Value(value.type)
            e.bind(target, b.gep(base, [b.mul(s, I64(size))]))
            e.copy(value, target)
    b.ret(I64(0))
    e.finish_entry()


def _grad(module, gradient: GradientProgram, offsets, plan_, float_type, checks):
    # grads = 0; for each sample: run the gradient program, whose gradients include the running sums
    # bound to `grads` (updated in place where the planner allowed); then grads /= n.
    tail = [("loss_mean", float_type.as_pointer()), ("grads", float_type.as_pointer()), ("workspace", I8P),
            ("status", I64.as_pointer())]
    args, function = _signature(module, "grad", float_type, tail)
    program = gradient.program
    user_inputs = [d for d in program.inputs if d.value not in gradient.accumulators.values()]
    e = _emitter(function, float_type, plan_, args, checks)
    b = e.b
    total = sum(v.type.size for v in gradient.gradients.values())
    zero = ir.Constant(float_type, 0.0)
    with e.loop(total, "g") as j:
        b.store(zero, b.gep(args["grads"], [j]))
    loss_sum = e.alloca(float_type, "loss.sum")
    b.store(zero, loss_sum)
    with e.loop(args["n"], "s") as s:
        _bind_sample(e, program, user_inputs, args, offsets, s)
        for name, accumulator in gradient.accumulators.items():
            e.bind(accumulator, b.gep(args["grads"], [I64(offsets[name])], inbounds=True, name=accumulator.hint))
        e.block(program.body)
        b.store(b.fadd(b.load(loss_sum), e.load(program.loss)), loss_sum)
        for name, value in gradient.gradients.items():
            e.copy(value, gradient.accumulators[name])  # nothing to do when it was updated in place
    count = b.sitofp(args["n"], float_type)
    b.store(b.fdiv(b.load(loss_sum), count), args["loss_mean"])
    with b.if_then(b.icmp_signed("!=", args["n"], I64(1))):  # x / 1 == x: skip the pass for one sample
        with e.loop(total, "g") as j:
            at = b.gep(args["grads"], [j])
            b.store(b.fdiv(b.load(at), count), at)
    b.ret(I64(0))
    e.finish_entry()
