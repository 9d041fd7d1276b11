"""The compiled kernels' C ABI, and the layout the runtime needs to call them.

One forward kernel per model, and one gradient kernel per gradient *variant* (exact, each
estimator's sampled adjoint, SPAD's scoring adjoint). Each loops over the samples of a batch in
compiled code:

    int64_t forward(const T *params, void *const *inputs, const int64_t *input_strides, int64_t n,
                    int64_t sample_offset, int64_t training, uint64_t seed, uint64_t step,
                    T *losses, void *const *outputs, void *workspace, int64_t *status);
    int64_t grad_<variant>(const T *params, void *const *inputs, const int64_t *input_strides, int64_t n,
                    int64_t sample_offset, int64_t training, uint64_t seed, uint64_t step,
                    T *loss_mean, T *grads, const double *site_data, double *scores,
                    int64_t *stored, void *workspace, int64_t *status);

T is double (or float with the f32 option). `params` and `grads` are flat buffers laid out as
`params` in the layout says. `inputs[k]` points at input k of sample 0, `input_strides[k]` bytes on
to the next sample (0: shared by all samples). `outputs[k]` receives output k of every sample,
stacked. `site_data` holds SPAD's per-site distributions, `scores` accumulates site scores (scoring
variants), `*stored` accumulates the tape bytes kept, over all samples. `workspace` holds the
variant's `workspace` bytes, 64-byte aligned. A kernel returns 0, or the 1-based number of the
run-time check that failed, with status = [check, offending value, sample].

Invariants:
- `grad_*` writes the mean loss and the mean gradient over the n samples; `forward` one loss each.
- Samples are keyed by `sample_offset + s`, so a batch split across calls gives the same draws.
- A gradient kernel whose entry has `hoisted` is its three parts called in turn, which the
  runtime may call itself (`grad_kernel`); its results are theirs.
- A kernel with `lanes` > 1 (its entry says how many) runs the samples in blocks of that many,
  side by side (spadc/backend/codegen.py, `lane_block`); its workspace holds every lane's values.
  A sample's forward values are the same bits as with one lane; a running sum adds the block's
  contributions in an order that depends on the lanes (to rounding).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

from llvmlite import ir

from spadrt.abi import ABI_VERSION
from spadrt.calls import CHUNK

from ..ad.forward import is_direction
from ..ad.reverse import GradientProgram
from ..ad.sampling import score_width
from ..ad.tape import plan_tape, value_bytes
from ..ir import conv
from ..ir.core import Program, Value
from .codegen import I64, Check, FunctionEmitter, in_lockstep, name_arguments
from .emitters import llvm_name
from .lane_ops import is_product
from ..passes.hoist import HOISTED_PREFIX, Split
from . import hoisting as hoisting_
from .memory import check_limit, element_size, lane_blocks, lane_common, plan
I8P = ir.IntType(8).as_pointer()
DOUBLE_P = ir.DoubleType().as_pointer()


def float_type(dtype: str):
    return ir.DoubleType() if dtype == "f64" else ir.FloatType()


def base_layout(program: Program, dtype: str) -> tuple[dict, dict]:
    """The model's layout (params, inputs, outputs), and its outputs as values by name."""
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
            # `loss`: which head (cross_entropy: the scores are logits; mse: against onehot(label, n))
            classifier = {"logits": logits_name, "label": label_input, "loss": program.head[0]}
    params, offset = [], 0
    for decl in program.params:
        params.append({"name": decl.name, "shape": list(decl.value.type.shape), "offset": offset,
                       "size": decl.value.type.size, "init": {"kind": decl.init.kind, "args": _jsonable(decl.init.args)},
                       "bounds": list(decl.bounds) if decl.bounds else None})
        offset += decl.value.type.size
    layout = {
        "name": program.name, "abi": ABI_VERSION, "dtype": dtype, "params": params, "param_count": offset,
        "inputs": [{"name": d.name, "shape": list(d.value.type.shape), "dtype": d.value.type.dtype,
                    "state": any(st.value is d.value for st in program.states)} for d in program.inputs],
        "outputs": [{"name": n, "shape": list(v.type.shape), "dtype": v.type.dtype, "hidden": n.startswith("_")}
                    for n, v in outputs.items()],
        "classifier": classifier,
        "state": [{"name": d.name, "shape": list(d.value.type.shape), "dtype": d.value.type.dtype,
                   "init": d.init.tolist()} for d in program.states],
        "variants": {},
    }
    return layout, outputs


def _jsonable(args):
    return [a.tolist() if hasattr(a, "tolist") else a for a in args]


def _checks(checks: list[Check]) -> list[dict]:
    return [{"message": c.message, "file": c.loc.source.name, "line": c.loc.line, "col": c.loc.col,
             "source_line": c.loc.source.line_text(c.loc.line)} for c in checks]


_COMMON = [("params", None), ("inputs", I8P.as_pointer()), ("input_strides", I64.as_pointer()), ("n", I64),
           ("sample_offset", I64), ("training", I64), ("seed", I64), ("step", I64)]


def _signature(module, name, float_type_, tail):
    arguments = [(n, float_type_.as_pointer() if t is None else t) for n, t in _COMMON] + tail
    function = ir.Function(module, ir.FunctionType(I64, [t for _, t in arguments]), name=name)
    return name_arguments(function, [n for n, _ in arguments]), function


def user_params(program: Program):
    """The params in the caller's buffer: all but the hoisted values (spadc/passes/hoist.py)."""
    return [decl for decl in program.params if not decl.name.startswith(HOISTED_PREFIX)]


def _param_offsets(layout) -> dict[str, int]:
    return {p["name"]: p["offset"] for p in layout["params"]}


def _bind_sample(e, program: Program, inputs, args, layout, s, params=None, evaluation=None):
    """Point the program's params (at `params`, default the shared ones) and the given inputs at
    sample `s`'s data; with `evaluation`, input k is also moved by `input_eval_strides[k]` bytes
    per evaluation (a particle's own state)."""
    b = e.b
    e.sample = b.add(args["sample_offset"], s, name="sample")
    params = args["params"] if params is None else params
    offsets = {p["name"]: p["offset"] for p in layout["params"]}
    for decl in user_params(program):
        e.bind(decl.value, b.gep(params, [I64(offsets[decl.name])], inbounds=True, name=llvm_name(decl.name)))
    for k, decl in enumerate(inputs):
        base = b.load(b.gep(args["inputs"], [I64(k)]))
        offset = b.mul(s, b.load(b.gep(args["input_strides"], [I64(k)])))
        if evaluation is not None:
            offset = b.add(offset, b.mul(evaluation, b.load(b.gep(args["input_eval_strides"], [I64(k)]))))
        e.bind(decl.value, b.gep(base, [offset], name=llvm_name(decl.name)))


def _bind_lanes(e, program: Program, inputs, args, layout) -> dict:
    """Lane kernels: the params, and a product's direction (passed at stride 0), once for all
    samples; returns each other input's (sample 0, stride)."""
    b = e.b
    offsets = {p["name"]: p["offset"] for p in layout["params"]}
    for decl in user_params(program):
        e.bind(decl.value, b.gep(args["params"], [I64(offsets[decl.name])], inbounds=True, name=llvm_name(decl.name)))
    per_sample = {}
    for k, decl in enumerate(inputs):
        base = b.load(b.gep(args["inputs"], [I64(k)]), name=llvm_name(decl.name))
        if is_direction(decl.name):
            e.bind(decl.value, base)
        else:
            per_sample[decl.value.id] = (base, b.load(b.gep(args["input_strides"], [I64(k)])))
    return per_sample


@contextmanager
def _lane_blocks(e, args, inputs: dict):
    """for each block of up to `e.plan.lanes` samples: the emitter's current block (its first
    sample's key, its lane count, its inputs); yields the block's first sample in this call."""
    b, lanes, n = e.b, e.plan.lanes, args["n"]
    blocks = b.udiv(b.add(n, I64(lanes - 1)), I64(lanes))
    with e.loop(blocks, "block") as block:
        start = b.mul(block, I64(lanes), name="block.start")
        left = b.sub(n, start)
        e.count = b.select(b.icmp_signed("<", left, I64(lanes)), left, I64(lanes), name="lanes")
        e.first = b.add(args["sample_offset"], start, name="block.sample")
        e.lane_inputs = {vid: (b.gep(base, [b.mul(start, stride)]), stride) for vid, (base, stride) in inputs.items()}
        yield start


def choose_lanes(gradient: GradientProgram, dtype: str, max_memory: int) -> int:
    """Lanes for a model's kernels, from its exact gradient kernel: one when no product of it runs over
    all lanes (lanes would only add loops), else MAX_LANES unless the workspace would then pass
    `lane_budget` or the memory limit (a long loop's tape). The lanes' workspace is planned, not
    estimated: one lane's size times the lanes misses what the lanes share, and a limit just above
    the estimate once refused a model that one lane fewer would have fitted."""
    float_bytes = 8 if dtype == "f64" else 4
    writable = frozenset(v.id for v in gradient.accumulators.values())
    one_lane = plan(gradient.program, float_bytes, writable)
    common = lane_common(gradient.program, writable)
    shared = lambda value: one_lane.storage_of(value.id) in common  # noqa: E731
    if not any(is_product(op, shared) for block in lane_blocks(gradient.program.body) for op in block.ops):
        return 1
    most = MAX_LANES if _param_bytes(gradient.program, float_bytes) > SMALL_PARAMS else FEW_LANES
    return lanes_within(gradient, dtype, min(lane_budget(gradient.program, float_bytes), max_memory), most,
                        one_lane.size)


def lane_budget(program: Program, float_bytes: int) -> int:
    """Workspace bytes beyond which a kernel runs fewer lanes: LANE_BUDGET, or the params' own
    bytes where they are more. Each call of a block of lanes reads every weight once, so where the
    weights pass the caches, fewer lanes stream them more often: 1,024-wide layers in a loop of 32
    took 1.13x JAX's time at 14 lanes (LANE_BUDGET alone), a workspace the size of the params at
    most keeps a process within twice what its params take."""
    return max(LANE_BUDGET, _param_bytes(program, float_bytes))


def _param_bytes(program: Program, float_bytes: int) -> int:
    return sum(math.prod(param.value.type.shape) for param in program.params) * float_bytes


def lanes_within(gradient: GradientProgram, dtype: str, cap: int, most: int, one_lane: int | None = None) -> int:
    """The most lanes, up to `most`, whose planned workspace is at most `cap` bytes (at least one)."""
    float_bytes = 8 if dtype == "f64" else 4
    writable = frozenset(v.id for v in gradient.accumulators.values())
    if one_lane is None:
        one_lane = plan(gradient.program, float_bytes, writable).size
    lanes = max(1, min(most, cap // max(one_lane, 1)))
    while lanes > 1:
        size = plan(gradient.program, float_bytes, writable, lanes).size
        if size <= cap:
            break
        lanes = max(1, min(lanes - 1, lanes * cap // size))
    return lanes


MAX_LANES = 128  # samples a kernel runs side by side (the runtime calls with up to 128: spadrt.calls.CHUNK)
# A block of lanes reads every weight once, which pays for its larger working set (every op of a
# loop body runs over all lanes before the next) only where the weights are big: with params (the
# per-sample program's: the model's and the values hoisted from them) of at most SMALL_PARAMS
# bytes, which stay in L2 between blocks, a kernel runs FEW_LANES. Gradients at 16
# lanes against 128 (A/B on one core of the Zen 4): Gaussian mixture D = 10, K = 25 0.92x, the
# LSTM 0.88x, 16- to 64-wide MLPs 0.98-1.00x; a 128-wide MLP's (258 KB) 1.14x, so it keeps 128.
SMALL_PARAMS = 128 << 10
FEW_LANES = 16
LANE_BUDGET = 4 << 20  # bytes of workspace beyond which a kernel runs fewer lanes


def forward_kernel(module, program: Program, layout: dict, outputs: dict, dtype: str, symbol: str = "forward",
                   max_memory: int | None = None, particles: bool = False, lanes: int = 1,
                   split: Split | None = None) -> dict:
    """Add the forward kernel to the module, named `symbol`; returns its entry for the layout.

    With `particles`, the kernel takes three more arguments, `rows`, `param_stride` and
    `input_eval_strides`: evaluation s is data row s % rows (keyed as that row: every particle sees
    the same dropout keys) with the params of particle s / rows, at `params + (s / rows) *
    param_stride`, and input k at `inputs[k] + (s % rows) * input_strides[k] + s *
    input_eval_strides[k]` (a state of each particle's own; ESTIMATORS.md section 8).

    With `split` (not for particles, whose params differ by evaluation), what depends on params
    alone runs once per call, before the samples (spadc/backend/hoisting.py)."""
    float_type_ = float_type(dtype)
    float_bytes = 8 if dtype == "f64" else 4
    checks: list[Check] = []
    if split is not None and not particles:
        program = split.per_sample
    else:
        split = None
    plan_ = plan(program, float_bytes, lanes=1 if particles else lanes,
                 lockstep=not particles and in_lockstep(program))
    check_limit(program, plan_, max_memory, "forward kernel", float_bytes)
    tail = [("losses", float_type_.as_pointer()), ("outputs", I8P.as_pointer()), ("workspace", I8P),
            ("status", I64.as_pointer())]
    if particles:
        tail += [("rows", I64), ("param_stride", I64), ("input_eval_strides", I64.as_pointer())]
    args, function = _signature(module, symbol, float_type_, tail)
    workspace = plan_.size
    if split is not None:
        prologue, prologue_size = hoisting_.prologue(module, symbol, split, float_type_, float_bytes, checks,
                                                     _param_offsets(layout), max_memory)
        hoisted = hoisting_.lay_out(split, plan_.size, float_bytes, prologue_size, 0, with_adjoints=False)
        workspace = hoisted.workspace
    e = FunctionEmitter(function, float_type_, plan_, args["workspace"], args["status"], checks)
    e.options = {"training": args["training"], "seed": args["seed"], "step": args["step"]}
    b = e.b
    if split is not None:
        block = hoisting_.block_pointer(e, args["workspace"], hoisted.values_at)
        hoisting_.call(e, prologue, args, block)
        hoisting_.bind_values(e, split, float_bytes, block)
    if plan_.lockstep:
        _forward_lanes(e, program, args, layout, outputs, float_bytes)
        return {"symbol": symbol, "workspace": workspace, "lanes": plan_.lanes, "checks": _checks(checks),
                "sample_work": sample_work(program.body)}
    with e.loop(args["n"], "s") as s:
        if particles:
            row = b.urem(s, args["rows"], name="row")
            own = b.gep(args["params"], [b.mul(b.udiv(s, args["rows"]), args["param_stride"])], name="particle")
            _bind_sample(e, program, program.inputs, args, layout, row, own, evaluation=s)
        else:
            _bind_sample(e, program, program.inputs, args, layout, s)
        e.block(program.body)
        _write_outputs(e, s, program, args, outputs, float_bytes)
    b.ret(I64(0))
    e.finish_entry()
    return {"symbol": symbol, "workspace": workspace, "lanes": 1, "checks": _checks(checks),
            "sample_work": sample_work(program.body)}


def _write_outputs(e, s, program, args, outputs, float_bytes):
    b = e.b
    b.store(e.load(program.loss), b.gep(args["losses"], [s]))
    for k, value in enumerate(outputs.values()):
        size = value.type.size * element_size(value.type.dtype, float_bytes)
        base = b.load(b.gep(args["outputs"], [I64(k)]))
        target = Value(value.type)
        e.bind(target, b.gep(base, [b.mul(s, I64(size))]))
        e.copy(value, target)


def _forward_lanes(e, program, args, layout, outputs, float_bytes):
    b = e.b
    inputs = _bind_lanes(e, program, program.inputs, args, layout)
    with _lane_blocks(e, args, inputs) as start:
        e.lane_block(program.body)
        with e.samples() as local:
            _write_outputs(e, b.add(start, local), program, args, outputs, float_bytes)
    b.ret(I64(0))
    e.finish_entry()


def grad_kernel(module, gradient: GradientProgram, layout: dict, dtype: str, symbol: str,
                max_memory: int | None = None, offsets: dict[str, int] | None = None, lanes: int = 1,
                split: Split | None = None) -> dict:
    """Add a gradient kernel named `symbol` to the module; returns its variant entry for the layout.

    grads = 0; for each sample: run the gradient program, whose gradients include the running sums
    bound to `grads` (updated in place where the planner allowed); then grads /= n. `offsets`: where
    each running sum starts in `grads` (default: the params' layout); `grads` holds `grad_size`
    floats, up to the end of the last sum (a Hessian product's kernel sums the gradient and H v).
    With lanes, every running sum must be updated in place (else the lanes would each keep one):
    a program where one is not runs one lane.

    With `split`, `gradient` is the gradient of `split.per_sample`, and the kernel is three calls:
    `<symbol>_hoist` computes the hoisted values into a block; `<symbol>_chunk` runs the
    samples, reading them and summing their adjoints (as `symbol` sums the gradient, mean
    included); `<symbol>_finish` adds the prologue's adjoint of those means to the gradient. The
    entry's `hoisted` names the three, which the runtime calls itself to hoist once per batch of
    several calls (spadc/backend/hoisting.py has their signatures):

        int64_t <symbol>_chunk(<symbol>'s arguments, const T *hoisted, T *adjoints);
    """
    float_type_ = float_type(dtype)
    float_bytes = 8 if dtype == "f64" else 4
    checks: list[Check] = []
    program = gradient.program
    tape = plan_tape(gradient, float_bytes)
    writable = frozenset(v.id for v in gradient.accumulators.values())
    plan_ = plan(program, float_bytes, writable, lanes, in_lockstep(program))
    if lanes > 1 and any(plan_.storage_of(value.id) != gradient.accumulators[name].id
                         for name, value in gradient.gradients.items()):
        plan_ = plan(program, float_bytes, writable)
    check_limit(program, plan_, max_memory, "gradient kernel", float_bytes)
    if offsets is None:
        offsets = _param_offsets(layout)
    sums = {name: v for name, v in gradient.accumulators.items() if not name.startswith(HOISTED_PREFIX)}
    total = max((offsets[name] + v.type.size for name, v in sums.items()), default=0)
    work = sample_work(program.body)
    entry = {"symbol": symbol, "workspace": plan_.size, "lanes": plan_.lanes, "tape_bytes": tape.static_bytes,
             "grad_size": total, "chunk": samples_per_call(work, total), "sample_work": work,
             "sites": [_site_entry(site, float_bytes) for site in gradient.sites],
             "site_data_size": sum(site.data_size for site in gradient.sites),
             "score_size": sum(site.site.size for site in gradient.sites) * score_width(gradient.score)}
    tail = [("loss_mean", float_type_.as_pointer()), ("grads", float_type_.as_pointer()), ("site_data", DOUBLE_P),
            ("scores", DOUBLE_P), ("stored", I64.as_pointer()), ("workspace", I8P), ("status", I64.as_pointer())]
    if split is None:
        args, function = _signature(module, symbol, float_type_, tail)
        _gradient_samples(FunctionEmitter(function, float_type_, plan_, args["workspace"], args["status"], checks),
                          args, gradient, layout, offsets, sums, total, tape, float_bytes)
        entry["checks"] = _checks(checks)
        return entry
    prologue, prologue_size = hoisting_.prologue(module, symbol, split, float_type_, float_bytes, checks, offsets,
                                                 max_memory)
    epilogue, epilogue_size = hoisting_.epilogue(module, symbol, split, float_type_, float_bytes, checks, offsets,
                                                 max_memory)
    hoisted = hoisting_.lay_out(split, plan_.size, float_bytes, prologue_size, epilogue_size, with_adjoints=True)
    args, chunk = _signature(module, f"{symbol}_chunk", float_type_, tail + [("hoisted", I8P), ("adjoints", I8P)])
    chunk.attributes.add("noinline")  # called by `symbol` too: one copy of the samples' code
    e = FunctionEmitter(chunk, float_type_, plan_, args["workspace"], args["status"], checks)
    hoisting_.bind_values(e, split, float_bytes, args["hoisted"], args["adjoints"], gradient.accumulators)
    _gradient_samples(e, args, gradient, layout, offsets, sums, total, tape, float_bytes,
                      adjoints=(args["adjoints"], hoisted.block))
    _whole_kernel(module, symbol, float_type_, tail, prologue, chunk, epilogue, hoisted)
    entry.update(workspace=hoisted.workspace, checks=_checks(checks),
                 hoisted={"bytes": hoisted.block, "hoist": prologue.name, "chunk": chunk.name, "finish": epilogue.name})
    return entry


def _gradient_samples(e, args, gradient: GradientProgram, layout, offsets, sums, total: int, tape, float_bytes: int,
                      adjoints=None):
    """The body of a gradient kernel over its samples; `adjoints`: (the hoisted values' adjoints'
    block, its bytes), zeroed first and scaled with the gradient (its padding too: the runtime
    adds whole blocks)."""
    program = gradient.program
    float_type_ = e.float
    user_inputs = [d for d in program.inputs if d.value not in gradient.accumulators.values()]
    e.options = {name: args[name] for name in ("training", "seed", "step", "site_data", "scores", "stored")}
    e.tape_bytes = tape.loop_bytes
    b = e.b
    zero = ir.Constant(float_type_, 0.0)
    running = [(args["grads"], total)]
    if adjoints is not None:
        running.append((b.bitcast(adjoints[0], float_type_.as_pointer()), adjoints[1] // float_bytes))
    for at, count in running:
        with e.loop(count, "g") as j:
            b.store(zero, b.gep(at, [j]))
    loss_sum = e.alloca(float_type_, "loss.sum")
    b.store(zero, loss_sum)
    top_bytes = sum(value_bytes(v, float_bytes) for v in tape.top)

    def bind_sums():
        for name, accumulator in sums.items():
            e.bind(accumulator, b.gep(args["grads"], [I64(offsets[name])], inbounds=True, name=llvm_name(accumulator.hint)))

    def add_sample():
        b.store(b.fadd(b.load(loss_sum), e.load(program.loss)), loss_sum)
        for name, value in gradient.gradients.items():
            e.copy(value, gradient.accumulators[name])  # nothing to do when it was updated in place
        if top_bytes:
            b.store(b.add(b.load(args["stored"]), I64(top_bytes)), args["stored"])

    if e.plan.lockstep:
        inputs = _bind_lanes(e, program, user_inputs, args, layout)
        bind_sums()
        with _lane_blocks(e, args, inputs):
            e.lane_block(program.body)
            with e.samples():
                add_sample()
    else:
        with e.loop(args["n"], "s") as s:
            _bind_sample(e, program, user_inputs, args, layout, s)
            bind_sums()
            e.block(program.body)
            add_sample()
    count = b.sitofp(args["n"], float_type_)
    b.store(b.fdiv(b.load(loss_sum), count), args["loss_mean"])
    n = args["n"]
    power_of_two = b.icmp_signed("==", b.and_(n, b.sub(n, I64(1))), I64(0))
    with b.if_else(power_of_two) as (exact_scaling, otherwise):
        with exact_scaling:  # x / 2^k == x * 2^-k, bit for bit, and a multiply is 8 times cheaper here
            with b.if_then(b.icmp_signed("!=", n, I64(1))):  # x / 1 == x: skip the pass for one sample
                inverse = b.fdiv(ir.Constant(float_type_, 1.0), count)
                for start, size in running:
                    with e.loop(size, "g") as j:
                        at = b.gep(start, [j])
                        b.store(b.fmul(b.load(at), inverse), at)
        with otherwise:
            for start, size in running:
                with e.loop(size, "g") as j:
                    at = b.gep(start, [j])
                    b.store(b.fdiv(b.load(at), count), at)
    b.ret(I64(0))
    e.finish_entry()


def _whole_kernel(module, symbol: str, float_type_, tail, prologue, chunk, epilogue, hoisted):
    """`symbol` of a split gradient kernel: `_hoist`, `_chunk` and `_finish` on its own workspace."""
    args, function = _signature(module, symbol, float_type_, tail)
    b = ir.IRBuilder(function.append_basic_block("entry"))
    values = b.gep(args["workspace"], [I64(hoisted.values_at)], inbounds=True, name="hoisted")
    adjoints = b.gep(args["workspace"], [I64(hoisted.adjoints_at)], inbounds=True, name="adjoints")
    calls = [(prologue, [args["params"], args["workspace"], args["status"], values]),
             (chunk, [*function.args, values, adjoints]),
             (epilogue, [args["params"], args["workspace"], args["status"], args["grads"], adjoints])]
    for callee, arguments in calls:
        failed = b.call(callee, arguments)
        with b.if_then(b.icmp_signed("!=", failed, I64(0)), likely=False):
            b.ret(failed)
    b.ret(I64(0))


MAX_CHUNK = 64 * CHUNK  # samples per gradient kernel call at the most (CHUNK: the least)
CHUNK_WORK = 64  # a call's samples do at least this many times the work of its gradient buffer


def samples_per_call(work: int, grad_size: int) -> int:
    """How many samples (each doing `work`, its `sample_work`) the runtime gives each call of a
    gradient kernel (a multiple of CHUNK, a constant of the kernel: results never depend on the
    thread count). Each call zeroes, scales and returns a whole gradient buffer, which the runtime
    adds to the others: where a sample's work is small beside the gradient (bundle adjustment
    gathers a few rows of 55,710 params per observation), 128 samples a call spent three quarters
    of the time on those buffers."""
    wanted = CHUNK_WORK * grad_size / max(work, 1)
    return min(CHUNK * max(1, -(-int(wanted) // CHUNK)), MAX_CHUNK)


def sample_work(block) -> int:
    """About how many values one run of a block computes, a product counting its multiply-adds; a
    loop or comprehension its trips times its body's, a cond its larger branch."""
    total = 0
    for op in block.ops:
        if op.regions:
            trips = max(op.attrs.get("hi", 1) - op.attrs.get("lo", 0), 1)
            total += trips * max(sample_work(region) for region in op.regions)
        elif op.kind == "index_add":  # in place: the entries added (a gradient's row, not the param)
            total += op.args[1].type.size
        elif op.kind in conv.KINDS:
            total += conv.multiply_adds(op)
        elif op.kind == "gate_conv_weight_grad":  # the kept positions' products only
            total += op.attrs["k"] * op.result.type.size
        else:
            size = sum(result.type.size for result in op.results)
            inner = op.args[0].type.shape[-1] if op.kind == "matmul" and op.args[0].type.shape else 1
            total += size * inner
    return total


def _site_entry(entry, float_bytes: int) -> dict:
    site = entry.site
    return {"id": site.id, "kind": site.kind, "description": site.describe(), "shape": list(site.shape),
            "d": site.size, "k": entry.k, "trips": site.trips, "data_offset": entry.data_offset,
            "data_size": entry.data_size, "score_offset": entry.score_offset,
            "file": site.loc.source.name, "line": site.loc.line, "col": site.loc.col,
            "source_line": site.loc.source.line_text(site.loc.line)}
