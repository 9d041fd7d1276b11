"""Binomial checkpointing schedules for reversing a loop (Griewank and Walther's Revolve; ESTIMATORS.md
section 9): which iterations' carried values to snapshot, and which iterations to run again, so that
a loop of `steps` iterations is reversed with `snapshots` stored states instead of a tape of every
iteration.

The model. Reversing step i needs the loop's carried values before it (state i): the step is run
once more with its tape, then its adjoint. State 0 is at hand when reversal starts and must be
kept in a snapshot (the forward pass overwrites the carried values); at most `snapshots` states are
held at once, that one included. A step may be *advanced* (run without a tape, to reach a later
state) several times: `replays` bounds how often any step is advanced, the first forward sweep
included.

Invariants (tests/test_checkpoints.py checks each against a brute-force search):
- `reversible(S, r) = C(S + r, S)` is the most steps that S snapshots reverse with r replays a step
  (Pascal's rule is the split: the first part keeps the snapshots and spends one replay, the second
  one snapshot fewer with all its replays).
- `schedule(steps, S)` reverses every step exactly once, from the last to the first, never holds
  more than S states, advances no step more than `replays_for(steps, S)` times, and advances
  `advances(steps, S)` steps in all: the fewest any schedule with S snapshots can.
- More snapshots never mean more replays or more advances.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb


@dataclass(frozen=True)
class Action:
    """`advance` runs steps [start, stop) without a tape; `snapshot` stores the current state (state
    `start`); `restore` makes state `start` current again; `reverse` runs step `start` with its tape
    and then its adjoint; `free` drops the snapshot of state `start`."""
    kind: str
    start: int
    stop: int | None = None


def reversible(snapshots: int, replays: int) -> int:
    """The most steps `snapshots` states reverse when no step is advanced more than `replays` times."""
    return comb(snapshots + replays, snapshots)


def replays_for(steps: int, snapshots: int) -> int:
    """The fewest replays a step with which `snapshots` states reverse `steps` steps."""
    _check(steps, snapshots)
    replays = 0
    while reversible(snapshots, replays) < steps:
        replays += 1
    return replays


def advances(steps: int, snapshots: int) -> int:
    """Steps advanced in all by `schedule(steps, snapshots)` (the taped runs of `reverse` excluded)."""
    _check(steps, snapshots)
    return _cost(steps, snapshots)


def schedule(steps: int, snapshots: int) -> list[Action]:
    """The actions that reverse `steps` steps holding at most `snapshots` states, from state 0."""
    return list(_actions(steps, snapshots))


def _actions(steps: int, snapshots: int):
    """`schedule`'s actions one at a time (a long schedule's list would take tens of megabytes)."""
    _check(steps, snapshots)
    yield Action("snapshot", 0)
    yield from _reverse(0, steps, snapshots)
    yield Action("free", 0)


def _check(steps: int, snapshots: int):
    if steps < 1 or snapshots < 1:
        raise ValueError(f"a schedule needs at least one step and one snapshot, got {steps} and {snapshots}")


def _first_part(steps: int, snapshots: int) -> int:
    """How many steps the first part of a split takes, for the fewest advances in all. With r
    replays needed, the smallest length that (a) leaves the second part reversible with one snapshot
    fewer, reversible(S - 1, r), and (b) is at least reversible(S, r - 2). Every length from there up
    to min(reversible(S, r - 1), steps - reversible(S - 1, r - 1)) is as good; tests/test_checkpoints.py
    checks the choice against a search over all splits."""
    replays = replays_for(steps, snapshots)
    below = reversible(snapshots, replays - 2) if replays >= 2 else 1
    return max(1, below, steps - reversible(snapshots - 1, replays))


def _cost(steps: int, snapshots: int) -> int:
    """Griewank's count of the binomial schedule's advances: r * steps - C(S + r, S + 1)."""
    replays = replays_for(steps, snapshots)
    return replays * steps - comb(snapshots + replays, snapshots + 1)


def _reverse(start: int, stop: int, snapshots: int):
    """The actions reversing steps [start, stop): state `start` is current and held in one of `snapshots`."""
    steps = stop - start
    if steps == 1:
        yield Action("reverse", start)
        return
    if snapshots == 1:  # only the base: advance to each step from it, the last step first
        for step in reversed(range(start, stop)):
            if step != stop - 1:
                yield Action("restore", start)
            if step > start:
                yield Action("advance", start, step)
            yield Action("reverse", step)
        return
    middle = start + _first_part(steps, snapshots)
    yield Action("advance", start, middle)
    yield Action("snapshot", middle)
    yield from _reverse(middle, stop, snapshots - 1)
    yield Action("free", middle)
    yield Action("restore", start)
    yield from _reverse(start, middle, snapshots)


# ---- a schedule as generated code runs it ------------------------------------------------------

ADVANCE, REVERSE = 0, 1  # the kinds of a compiled action


@dataclass(frozen=True)
class CompiledSchedule:
    """`schedule(steps, snapshots)` as a checkpointed loop's generated code runs it
    (spadc/ad/binomial.py). Its states live in `rows` buffer rows: one per snapshot (slot k holds
    the k-th state of the stack of held snapshots: a schedule frees them last in, first out) and
    `current`, the state being advanced.
    - `forward[i]`: the row the forward pass writes state i into (at iteration i, untaped): a
      snapshot's slot for the states the schedule's first sweep keeps, else `current`. The forward
      pass runs every step, so it also leaves state steps - 1, the first to be reversed, in a row.
    - `actions`: then, in order, (kind, step, source row, destination row): ADVANCE runs `step`
      without a tape from the state in the source row and writes the state after it into the
      destination row; REVERSE runs `step` with its tape from the state in the source row, then its
      adjoint (its destination is `current`, overwritten with no state anyone reads)."""
    forward: tuple[int, ...]
    actions: tuple[tuple[int, int, int, int], ...]
    rows: int

    @property
    def current(self) -> int:
        return self.rows - 1


@lru_cache(maxsize=8)  # (a plan's forward pass and adjoint both read it)
def compiled(steps: int, snapshots: int) -> CompiledSchedule:
    """The schedule that reverses `steps` steps with `snapshots` held states (`schedule`), as rows
    and actions (CompiledSchedule)."""
    current = snapshots  # the row after the snapshots' slots
    forward, actions = [current] * steps, []
    slots: dict[int, int] = {}
    stack: list[int] = []
    position, row, sweeping = 0, current, True  # the state at hand, the row it is in, first sweep
    for action in _actions(steps, snapshots):
        if action.kind == "snapshot":
            assert action.start == position
            slots[action.start] = len(stack)
            stack.append(action.start)
            if sweeping:
                forward[action.start] = slots[action.start]
            else:  # the advance that reached it writes it into its slot directly
                kind, step, source, _ = actions[-1]
                assert kind == ADVANCE and step + 1 == position
                actions[-1] = (kind, step, source, slots[action.start])
            row = slots[action.start]
        elif action.kind == "free":
            assert stack.pop() == action.start
        elif action.kind == "restore":
            position, row = action.start, slots[action.start]
        elif action.kind == "advance":
            assert action.start == position
            if not sweeping:
                for step in range(action.start, action.stop):
                    actions.append((ADVANCE, step, row, current))
                    row = current
            position = action.stop
        else:
            assert action.start == position
            if sweeping:  # the forward pass left the state before the last step in its row
                sweeping, row = False, forward[position]
            actions.append((REVERSE, action.start, row, current))
            position = None
    assert not stack and max(slots.values(), default=0) < snapshots
    return CompiledSchedule(tuple(forward), tuple(actions), snapshots + 1)
