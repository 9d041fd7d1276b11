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
    _check(steps, snapshots)
    actions = [Action("snapshot", 0)]
    _reverse(0, steps, snapshots, actions)
    actions.append(Action("free", 0))
    return actions


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


def _reverse(start: int, stop: int, snapshots: int, actions: list[Action]):
    """Reverse steps [start, stop): state `start` is current and held in one of `snapshots`."""
    steps = stop - start
    if steps == 1:
        actions.append(Action("reverse", start))
        return
    if snapshots == 1:  # only the base: advance to each step from it, the last step first
        for step in reversed(range(start, stop)):
            if step != stop - 1:
                actions.append(Action("restore", start))
            if step > start:
                actions.append(Action("advance", start, step))
            actions.append(Action("reverse", step))
        return
    middle = start + _first_part(steps, snapshots)
    actions += [Action("advance", start, middle), Action("snapshot", middle)]
    _reverse(middle, stop, snapshots - 1, actions)
    actions += [Action("free", middle), Action("restore", start)]
    _reverse(start, middle, snapshots, actions)
