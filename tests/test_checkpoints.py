"""Binomial checkpointing schedules (spadc/ad/checkpoints.py) against a simulator that runs them and
a brute-force search over every split (the oracle of optimality), for every loop length and
snapshot count up to a bound."""

from functools import lru_cache
from math import comb

import pytest

from spadc.ad import checkpoints

MAX_STEPS = 60  # every length up to this...
MAX_SNAPSHOTS = 6  # ...with every snapshot count up to this


@lru_cache(maxsize=None)
def fewest_advances(steps: int, snapshots: int) -> int:
    """The least steps any schedule advances, by trying every split (no formula shared with the module)."""
    if steps == 1:
        return 0
    if snapshots == 1:
        return steps * (steps - 1) // 2
    return min(first + fewest_advances(steps - first, snapshots - 1) + fewest_advances(first, snapshots)
               for first in range(1, steps))


def simulate(actions, steps: int, snapshots: int):
    """Run a schedule on a loop whose state is the iteration's index: every action must be legal.
    Returns (the order steps were reversed in, advances per step, the most states held at once)."""
    current, held, peak = 0, set(), 0
    reversed_order, advanced = [], [0] * steps
    for action in actions:
        if action.kind == "snapshot":
            assert action.start == current and action.start not in held
            held.add(current)
            peak = max(peak, len(held))
        elif action.kind == "free":
            held.remove(action.start)
        elif action.kind == "restore":
            assert action.start in held
            current = action.start
        elif action.kind == "advance":
            assert action.start == current and current < action.stop <= steps
            for step in range(action.start, action.stop):
                advanced[step] += 1
            current = action.stop
        else:
            assert action.kind == "reverse" and action.start == current
            reversed_order.append(action.start)
            current = None  # a reversed step's state is used up: a restore must follow
    assert not held
    return reversed_order, advanced, peak


@pytest.mark.parametrize("snapshots", range(1, MAX_SNAPSHOTS + 1))
def test_schedules_reverse_every_step_within_their_snapshots_and_replays_with_the_fewest_advances(snapshots):
    for steps in range(1, MAX_STEPS + 1):
        order, advanced, peak = simulate(checkpoints.schedule(steps, snapshots), steps, snapshots)
        assert order == list(reversed(range(steps))), (steps, snapshots)
        assert peak <= snapshots
        # the first forward sweep counts as one advance of every step it passes
        assert max(advanced) <= checkpoints.replays_for(steps, snapshots), (steps, snapshots)
        assert sum(advanced) == checkpoints.advances(steps, snapshots) == fewest_advances(steps, snapshots), \
            (steps, snapshots)


def test_the_binomial_bound_is_reached_and_not_passed():
    for snapshots in range(1, MAX_SNAPSHOTS + 1):
        for replays in range(0, 5):
            most = comb(snapshots + replays, snapshots)
            assert checkpoints.reversible(snapshots, replays) == most
            assert checkpoints.replays_for(most, snapshots) == replays
            assert checkpoints.replays_for(most + 1, snapshots) == replays + 1


def test_more_snapshots_never_cost_more():
    for steps in range(1, MAX_STEPS + 1):
        replays = [checkpoints.replays_for(steps, s) for s in range(1, MAX_SNAPSHOTS + 1)]
        work = [checkpoints.advances(steps, s) for s in range(1, MAX_SNAPSHOTS + 1)]
        assert replays == sorted(replays, reverse=True) and work == sorted(work, reverse=True)


def test_a_long_loop_is_planned_without_listing_it():
    """A billion steps in 20 snapshots: 14 replays a step (C(33, 20) < 10^9 <= C(34, 20))."""
    assert comb(33, 20) < 10**9 <= comb(34, 20)
    assert checkpoints.replays_for(10**9, 20) == 14
    # The closed-form count against the schedule's own splits, summed (the simulator cannot run 10^9 steps)
    @lru_cache(maxsize=None)
    def split_cost(steps, snapshots):
        if steps == 1:
            return 0
        if snapshots == 1:
            return steps * (steps - 1) // 2
        first = checkpoints._first_part(steps, snapshots)
        return first + split_cost(steps - first, snapshots - 1) + split_cost(first, snapshots)
    assert checkpoints.advances(10**6, 8) == split_cost(10**6, 8)


def test_a_wrong_split_is_caught():
    """The oracle has power: halving instead of the binomial split advances more steps."""
    def halving(steps, snapshots):
        if steps == 1:
            return 0
        if snapshots == 1:
            return steps * (steps - 1) // 2
        first = steps // 2
        return first + halving(steps - first, snapshots - 1) + halving(first, snapshots)
    assert any(halving(steps, 3) > fewest_advances(steps, 3) for steps in range(2, MAX_STEPS + 1))


def test_bad_arguments_are_refused():
    for steps, snapshots in [(0, 3), (5, 0), (-1, 2)]:
        with pytest.raises(ValueError, match="at least one step and one snapshot"):
            checkpoints.schedule(steps, snapshots)


def run_compiled(plan: checkpoints.CompiledSchedule, steps: int):
    """Run a compiled schedule on a loop whose state is the iteration's index, its rows a list: the
    forward pass, then the actions. Returns (the order steps were reversed in, advances per step,
    the forward pass's counted as the schedule's first sweep: every step but the last, which the
    schedule runs with its tape instead). Every action must read the state of its own step."""
    rows = [None] * plan.rows
    for state in range(steps):  # the forward pass writes state i at iteration i
        rows[plan.forward[state]] = state
    order, advanced = [], [1] * (steps - 1) + [0]
    for kind, step, source, destination in plan.actions:
        assert rows[source] == step, (kind, step, source, rows)
        if kind == checkpoints.ADVANCE:
            advanced[step] += 1
            rows[destination] = step + 1
        else:
            assert kind == checkpoints.REVERSE and destination == plan.current
            order.append(step)
            rows[destination] = None  # what a reversal leaves there is no state
    return order, advanced


@pytest.mark.parametrize("snapshots", range(1, MAX_SNAPSHOTS + 1))
def test_compiled_schedules_read_the_right_state_for_every_action(snapshots):
    for steps in range(1, MAX_STEPS + 1):
        plan = checkpoints.compiled(steps, snapshots)
        order, advanced = run_compiled(plan, steps)
        assert order == list(reversed(range(steps)))
        assert plan.rows == snapshots + 1
        assert max(advanced) <= checkpoints.replays_for(steps, snapshots), (steps, snapshots)
        assert sum(advanced) == checkpoints.advances(steps, snapshots), (steps, snapshots)


def test_a_compiled_schedule_that_skips_a_snapshot_is_caught():
    """The runner has power: a schedule whose forward pass forgets a snapshot reads a wrong state."""
    plan = checkpoints.compiled(10, 3)
    forgetful = checkpoints.CompiledSchedule((plan.current,) + plan.forward[1:], plan.actions, plan.rows)
    with pytest.raises(AssertionError):
        run_compiled(forgetful, 10)
