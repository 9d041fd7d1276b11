"""The memory budget of a gradient kernel: tape when it fits, else checkpoint loops (ESTIMATORS.md section 9).

`plan_gradient(program, limit, checkpoint, differentiate)` returns the gradient program a kernel
compiles, and the plan behind it:
- `checkpoint="auto"`: the taped gradient when its workspace fits `limit`; else the top-level loops
  are cut into segments (spadc/passes/checkpoint.py) with the fewest replays of a step whose
  workspace fits, one more at a time: nested uniform levels, or from two replays on a binomial
  schedule over the segments (`Binomial`), whichever the estimate ranks first; refused, naming the
  least workspace found, when none up to MAX_LEVELS replays fits.
- `checkpoint="none"`: the taped gradient (the kernel refuses it if it does not fit).
- `checkpoint=K`: one level with K segments per long loop (the nearest divisor of its trip count).

Invariants:
- A plan's workspace is the memory planner's (spadc/backend/memory.py) for the program as it will be
  compiled, never an estimate: the estimate below only orders the candidates, and the planner's size
  decides. So the kernel's workspace is within the budget whenever a plan is returned.
- More budget never means more replays: levels are tried in increasing order, the first that fits
  is taken, and each level's candidates end with ones that do not depend on the budget (every long
  loop cut), so a level that fits at one budget fits at any larger one, so long as cutting one more
  loop never raises the workspace. A binomial cut of r replays holds the fewest snapshots that
  reverse its segments with r replays: one candidate per segment count, whatever the budget.
- The cut changes where values live, not their bits (spadc/passes/checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from llvmlite import ir
from spadrt.limits import format_bytes, limit_text

from .. import passes
from ..ad.checkpoints import reversible
from ..ad.reverse import GradientProgram, gradient
from ..ad.tape import plan_tape, value_bytes
from ..errors import SpadcError
from ..ir.core import Op, Program
from ..passes import hoist
from ..passes.checkpoint import Binomial, cut, divisors, top_level_loops, trips
from . import kernels
from .memory import plan as memory_plan

MAX_LEVELS = 4  # replays of a step tried under "auto"
MAX_ACTIONS = 1 << 16  # a binomial schedule's actions, kept as constants of the kernel (8 bytes each)
MIN_TRIPS = 2  # a loop of one step has nothing to cut


@dataclass
class BudgetPlan:
    """What a gradient kernel was planned to: the cut (loop position -> segment counts, outermost
    first, or a `Binomial` plan), the workspace and the taped workspace."""
    cuts: dict[int, tuple[int, ...] | Binomial] = field(default_factory=dict)
    workspace: int = 0
    taped_workspace: int = 0
    taped_tape: float = 0.0  # bytes the taped program keeps per sample (spadc/ad/tape.py)

    @property
    def replays(self) -> int:
        """Forward replays of a step beyond the first forward pass, at most (the deepest cut's)."""
        return max((_replays(counts) for counts in self.cuts.values()), default=0)

    def describe(self, program: Program) -> list[str]:
        loops = top_level_loops(program)
        lines = []
        for position, counts in sorted(self.cuts.items()):
            loop = loops[position]
            if isinstance(counts, Binomial):
                replays = counts.replays
                lines.append(f"loop at line {loop.loc.line} ({trips(loop):,} steps): a binomial schedule of "
                             f"{counts.snapshots:,} snapshots over {counts.segments:,} segments of "
                             f"{trips(loop) // counts.segments:,} steps taped, up to {replays} "
                             f"replay{'s' if replays > 1 else ''} of a step")
                continue
            steps = trips(loop) // math.prod(counts)
            snapshots = " + ".join(f"{n:,}" for n in counts)
            lines.append(f"loop at line {loop.loc.line} ({trips(loop):,} steps): {snapshots} snapshots, segments of "
                         f"{steps:,} steps taped, {len(counts)} replay{'s' if len(counts) > 1 else ''} of each step")
        return lines

    def as_layout(self) -> dict:
        return {"cuts": {str(k): cut_as_json(v) for k, v in self.cuts.items()}, "forward_replays": self.replays,
                "taped_workspace": self.taped_workspace}


def cut_as_json(counts: tuple[int, ...] | Binomial):
    if isinstance(counts, Binomial):
        return {"segments": counts.segments, "snapshots": counts.snapshots}
    return list(counts)


def cut_from_json(value) -> tuple[int, ...] | Binomial:
    return Binomial(value["segments"], value["snapshots"]) if isinstance(value, dict) else tuple(value)


def _replays(counts: tuple[int, ...] | Binomial) -> int:
    return counts.replays if isinstance(counts, Binomial) else len(counts)


def plan_exact(program: Program, exact: GradientProgram, dtype: str, limit: int, lanes: int | None, checkpoint,
               module_name: str = ""):
    """The exact gradient kernel's plan within the budget: (per-sample gradient program, split,
    BudgetPlan, lanes, the kernel `grad` emitted into a module named `module_name`, its layout
    entry). What depends on params alone is hoisted (spadc/passes/hoist.py) and the per-sample
    part's loops are cut when its tape does not fit. The hoisted part's workspace comes on top of
    the per-sample plan, so the per-sample part gets what it leaves; when it leaves too little, the
    kernel is unsplit. With lanes given, each lane holds a sample's values: the per-sample part is
    planned to what they leave. Checkpointing never decides whether a kernel is split, so a
    checkpointed gradient rounds as the taped one does, bit for bit. `exact`: the taped gradient of
    `program`, already made."""
    float_bytes = 8 if dtype == "f64" else 4
    hoisted = hoist.split(program)
    for split in ([hoisted, None] if hoisted is not None else [None]):
        target = program if split is None else split.per_sample

        def differentiate(cut_program):
            return exact if cut_program is program else differentiated(cut_program)

        room, attempts = limit, SPLIT_ATTEMPTS if split is not None else PLAN_ATTEMPTS
        for attempt in range(attempts):
            try:
                per_sample, plan = plan_gradient(target, room, checkpoint, differentiate, float_bytes)
                chosen = kernels.choose_lanes(per_sample, dtype, limit) if lanes is None else lanes
                layout, _ = kernels.base_layout(program, dtype)
                # Emitted once to learn the whole kernel's workspace; over the budget (by the hoisted
                # part's share, or because its `chosen` lanes each hold a sample's values), the
                # per-sample part is planned again with that much less, and a split kernel is at
                # last built unsplit. The last unsplit attempt reports what does not fit.
                checked = split is not None or attempt == attempts - 1
                module = ir.Module(name=module_name)
                entry = kernels.grad_kernel(module, per_sample, layout, dtype, "grad",
                                            limit if checked else None, lanes=chosen, split=split)
            except SpadcError:
                if split is None:
                    raise
                break
            if entry["workspace"] <= limit:
                plan.workspace = entry["workspace"]
                return per_sample, split, plan, chosen, module, entry
            excess = entry["workspace"] - limit
            # One lane: the hoisted part's share comes off the room. Lanes: each holds a sample's
            # plan, so what one lane keeps must shrink by its share of the excess.
            room = room - excess if chosen == 1 else plan.workspace - -(-excess // chosen)
    raise AssertionError("an unsplit kernel either fits or is refused")


SPLIT_ATTEMPTS = 2  # plans of a hoisted kernel's per-sample part before building it unsplit
PLAN_ATTEMPTS = 4  # plans of an unsplit kernel's per-sample part (lanes given) before refusing


def check_option(checkpoint) -> object:
    if checkpoint in ("auto", "none"):
        return checkpoint
    if isinstance(checkpoint, str) and checkpoint.isdigit():
        checkpoint = int(checkpoint)
    if isinstance(checkpoint, int) and not isinstance(checkpoint, bool) and checkpoint >= 1:
        return checkpoint
    raise SpadcError(f'checkpoint must be "auto", "none" or a number of snapshots (a positive integer), '
                     f'got {checkpoint!r}')


def plan_gradient(program: Program, limit: int, checkpoint, differentiate: Callable[[Program], GradientProgram],
                  float_bytes: int = 8) -> tuple[GradientProgram, BudgetPlan]:
    """The gradient program to compile under `limit` bytes of workspace, and its plan.
    `differentiate(program)` makes a gradient program ready for code generation."""
    checkpoint = check_option(checkpoint)
    taped = differentiate(program)
    taped_size = workspace_of(taped, float_bytes)
    taped_tape = plan_tape(taped, float_bytes).static_bytes
    if checkpoint == "none" or (checkpoint == "auto" and taped_size <= limit):
        return taped, BudgetPlan({}, taped_size, taped_size, taped_tape)
    loops = [(k, op) for k, op in enumerate(top_level_loops(program)) if trips(op) >= MIN_TRIPS]
    if not loops:
        return taped, BudgetPlan({}, taped_size, taped_size, taped_tape)  # nothing to cut: the kernel's own check refuses
    sizes = _loop_sizes(taped, program, loops, float_bytes)
    if checkpoint != "auto":
        cuts = fixed_cuts(loops, checkpoint)
        planned = differentiate(cut(program, cuts))
        return planned, BudgetPlan(cuts, workspace_of(planned, float_bytes), taped_size, taped_tape)
    least = None
    for levels in range(1, MAX_LEVELS + 1):
        for cuts in _candidates(loops, sizes, levels, limit, taped_size):
            planned = differentiate(cut(program, cuts))
            size = workspace_of(planned, float_bytes)
            if size <= limit:
                return planned, BudgetPlan(cuts, size, taped_size, taped_tape)
            least = size if least is None else min(least, size)
    raise SpadcError(f"the gradient needs a workspace of {format_bytes(taped_size)} taped, and at least "
                     f"{format_bytes(least)} checkpointed with up to {MAX_LEVELS} replays of each step: more than "
                     f"{limit_text(limit)}. A budget of {least:,} bytes would do", loops[0][1].loc)


def differentiated(program: Program, **options) -> GradientProgram:
    """The accumulating gradient program of `program` after the pass pipeline, as kernels compile it
    (`options`: those of spadc.ad.reverse.gradient: sampling, score, policy)."""
    result = gradient(program, accumulate=True, **options)
    result.program = passes.run(result.program)
    return result


def workspace_of(planned: GradientProgram, float_bytes: int) -> int:
    writable = frozenset(v.id for v in planned.accumulators.values())
    return memory_plan(planned.program, float_bytes, writable).size


@dataclass(frozen=True)
class _LoopSize:
    steps: int
    snapshot: int  # bytes of the carried values (one snapshot)
    step_tape: int  # bytes the taped loop keeps per step


def _loop_sizes(taped: GradientProgram, program: Program, loops: list[tuple[int, Op]],
                float_bytes: int) -> dict[int, _LoopSize]:
    """Per loop: its snapshot and per-step tape bytes, read from the taped gradient program, whose
    forward pass has the program's top-level loops in order (with their tapes as extra results)."""
    forward = [op for op in taped.program.body.ops if op.kind == "loop" and not op.attrs.get("reverse")]
    sizes = {}
    for k, op in loops:
        carried = len(op.args)
        snapshot = sum(value_bytes(v, float_bytes) for v in op.args)
        match = forward[k] if k < len(forward) and forward[k].loc == op.loc else None
        tape = sum(value_bytes(v, float_bytes) for v in match.results[carried:]) if match is not None else snapshot * trips(op)
        sizes[k] = _LoopSize(trips(op), snapshot, max(tape // max(trips(op), 1), 1))
    return sizes


def _candidates(loops, sizes: dict[int, _LoopSize], levels: int, limit: int, taped_size: int):
    """Cuts with `levels` replays, the likeliest to fit first: the loops with the largest tapes are
    cut until the estimated workspace fits (loops whose tape is small are left taped: cutting them
    would replay them for little), each by its plans in order of estimated peak (snapshots, one
    segment's tape); then runners-up, in case the planner's size differs from the estimate. Each
    rank offers nested cuts and binomial ones (whose dispatch the estimate leaves out, so they do not
    crowd the nested ones out of the ranks), the lower estimate first, and ends with every long loop
    cut: a candidate that does not depend on the budget, so what fits at one budget is tried, and
    fits, at any larger one."""
    families = []
    for plans in (_factorisations, _binomials):
        ranked = {k: sorted(plans(sizes[k].steps, levels), key=lambda counts: _estimate(sizes[k], counts))
                  for k, _ in loops}
        by_tape = sorted((k for k, _ in loops if ranked[k]), key=lambda k: -sizes[k].steps * sizes[k].step_tape)
        if by_tape:
            families.append((ranked, by_tape))
    for rank in range(3):
        offered = []
        for ranked, by_tape in families:
            cuts, estimate = {}, taped_size
            for k in by_tape:
                cuts[k] = ranked[k][min(rank, len(ranked[k]) - 1)]
                estimate += _estimate(sizes[k], cuts[k]) - sizes[k].steps * sizes[k].step_tape
                if estimate <= limit:
                    break
            every = {k: ranked[k][min(rank, len(ranked[k]) - 1)] for k in by_tape}
            offered += [(estimate, cuts)] if cuts != every else []
            offered.append((taped_size + sum(_estimate(sizes[k], every[k]) - sizes[k].steps * sizes[k].step_tape
                                             for k in every), every))
        yield from (cuts for _, cuts in sorted(offered, key=lambda pair: pair[0]))


def _estimate(size: _LoopSize, counts: tuple[int, ...] | Binomial) -> int:
    if isinstance(counts, Binomial):  # its rows: the snapshots and the state advanced
        return (counts.snapshots + 1) * size.snapshot + (size.steps // counts.segments) * size.step_tape
    return sum(counts) * size.snapshot + (size.steps // math.prod(counts)) * size.step_tape


def _binomials(steps: int, replays: int) -> list[Binomial]:
    """From two replays on: per segment count, the fewest snapshots a binomial schedule of
    `replays` replays needs; left out, those holding a snapshot a segment (a one-level cut does
    that with one replay) and those of more than MAX_ACTIONS actions."""
    found = []
    for segments in divisors(steps) if replays >= 2 else ():
        snapshots = 1
        while reversible(snapshots, replays) < segments:
            snapshots += 1
        if snapshots < segments - 1 and segments * replays <= MAX_ACTIONS:  # else one snapshot a segment
            found.append(Binomial(segments, snapshots))
    return found


def _factorisations(steps: int, levels: int) -> list[tuple[int, ...]]:
    """Segment counts (N1, ..., N_levels), each at least 2, whose product divides `steps` and leaves
    segments of at least one step."""
    options = [d for d in divisors(steps) if d >= 2]
    found = []

    def extend(prefix: tuple[int, ...], remaining: int):
        if len(prefix) == levels:
            found.append(prefix)
            return
        for d in options:
            if remaining % d == 0:
                extend(prefix + (d,), remaining // d)

    extend((), steps)
    return found


def fixed_cuts(loops: list[tuple[int, Op]], snapshots: int) -> dict[int, tuple[int, ...] | Binomial]:
    """`checkpoint=K`: each long loop cut once, into the divisor of its trip count nearest K."""
    return {k: (_nearest_divisor(trips(op), snapshots),) for k, op in loops}


def _nearest_divisor(steps: int, wanted: int) -> int:
    return min(divisors(steps), key=lambda d: (abs(d - wanted), d))
