"""One SPAD gradient on a model (ESTIMATORS.md section 4): which kernel runs at this step, and
how the sites' distributions are re-ranked on evaluation steps.

Invariants:
- SPAD's state belongs to the pair (estimator, model): `spad.state` is a weak dictionary keyed by
  the model object, so a freed model's state goes with it; a state whose sites do not match the
  model's is refused, never read out of bounds.
- Steps 0, refresh, 2 refresh, ... are evaluation steps. Under `paths` (the default) they run
  `candidates` RAD estimates, each with RAD's tape, and return their mean; under `gradient` the
  exact adjoint (exact tape, exact gradient); under `forward` the sampled adjoint with residual
  scores. Other steps follow the current ranking with RAD's tape.
- Candidate keys come from (seed, step, candidate), so a step is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np

from . import spad as spad_state
from .errors import SpadcError
from .estimators import SPAD, is_evaluation_step, variant_key

_U64 = (1 << 64) - 1


def spad_gradient(model, spad: SPAD, step, call, seeded=()) -> tuple:
    """(mean loss, flat gradient, bytes stored over the batch, the kernel's layout entry); with
    `seeded`, of a VJP's surrogate (`Model._estimate`), its distributions kept apart from the loss's."""
    step = spad.step if step is None else int(step)
    spad.step = step + 1
    sampling = spad.sampling
    if sampling is None:  # keep = 1: the exact gradient
        entry, function = model._variant(None, seeded=seeded)
        return (*model._run(entry, function, step=step, **call), entry)
    entry, function = model._variant(sampling, seeded=seeded)
    state = _state(model, spad, entry, variant_key(sampling, seeded=seeded))
    evaluation = is_evaluation_step(spad, step)
    if spad.policy == "best_of":
        if evaluation or state["best"] is None:
            state["best"] = _best_of(model, spad, entry, function, step, call)
        best_seed, best_step = state["best"]
        return (*model._run(entry, function, step=best_step, **{**call, "seed": best_seed}), entry)
    if evaluation and spad.score == "paths":
        return _paths_evaluation(model, spad, state, entry, step, call, seeded)
    if evaluation and spad.score in ("gradient", "forward"):
        if spad.score == "gradient":  # the exact adjoint, with scores: the exact tape
            scoring, scorer = model._variant(None, "gradient", sampling, seeded)  # at the sites it draws
            extra = {}
        else:  # the sampled adjoint following the current ranking, adding |residual| where drawn
            scoring, scorer = model._variant(sampling, "forward", seeded=seeded)
            extra = {"site_data": state["data"]}
        scores = np.zeros(max(scoring["score_size"], 1))
        result = model._run(scoring, scorer, step=step, scores=scores, **extra, **call)
        spad_state.update(state["data"], entry["sites"], scoring["sites"], scores, sampling.draw,
                          sampling.scheme, spad.floor, spad.keep)
        return (*result, scoring)
    return (*model._run(entry, function, step=step, site_data=state["data"], **call), entry)


def _state(model, spad: SPAD, entry: dict, key: str) -> dict:
    state = spad.state.setdefault(model, {}).get(key)
    if state is None:
        data = spad_state.initial_data(entry["sites"], entry["site_data_size"], spad.draw, spad.sampling.scheme)
        state = spad.state[model][key] = {"data": data, "best": None, "sites": entry["sites"]}
    elif state["sites"] != entry["sites"] or state["data"].size < max(entry["site_data_size"], 1):
        raise SpadcError("this SPAD estimator's state does not match the model's sites; use a new SPAD object")
    return state


def _paths_evaluation(model, spad: SPAD, state, entry, step: int, call, seeded):
    """`candidates` RAD estimates, each adding the contributions through its drawn entries to the
    scores; the estimate is their mean (unbiased), and memory per call is RAD's."""
    scoring, scorer = model._variant(spad.evaluation_sampling, "paths", seeded=seeded)
    scores = np.zeros(max(scoring["score_size"], 1))
    loss, total, stored = 0.0, None, 0
    for candidate in range(spad.candidates):
        seed = candidate_seed(call["seed"], step, candidate)
        candidate_loss, grads, measured = model._run(scoring, scorer, step=step, scores=scores,
                                                     **{**call, "seed": seed})
        loss += candidate_loss / spad.candidates
        total = grads if total is None else total + grads
        stored = max(stored, measured)
    spad_state.update(state["data"], entry["sites"], scoring["sites"], scores, spad.draw,
                      spad.sampling.scheme, spad.floor, spad.keep, observed=True)
    return loss, total / spad.candidates, stored, scoring


def _best_of(model, spad: SPAD, entry, function, step: int, call) -> tuple[int, int]:
    """Of `candidates` uniform masks, the key whose estimate has the largest L1 norm."""
    best, best_norm = None, -1.0
    for candidate in range(spad.candidates):
        seed = candidate_seed(call["seed"], step, candidate)
        _, grads, _ = model._run(entry, function, step=step, **{**call, "seed": seed})
        norm = float(np.abs(grads).sum())
        if norm > best_norm:
            best, best_norm = (seed, step), norm
    return best


def candidate_seed(seed: int, step: int, candidate: int) -> int:
    """A distinct, reproducible key for each candidate of an evaluation step (best_of, paths):
    SplitMix64 of the three words."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + candidate + 1) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)
