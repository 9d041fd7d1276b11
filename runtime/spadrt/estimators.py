"""Gradient estimators (ESTIMATORS.md): `Exact`, `RAD` and `SPAD`, as the user configures them.

These objects say *which* estimate is wanted; the compiler turns their static part (`Sampling`)
into a gradient kernel, and the runtime carries SPAD's state (distributions, step counter).

Invariants:
- `keep = 1` turns gating off: every estimator is then the exact gradient.
- A configuration mistake raises `SpadcError` naming the argument.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

from .arguments import is_real
from .errors import SpadcError
from .local_state import ProcessLocalState
from .es import ES, PES


class SamplingWarning(UserWarning):
    """A param has a path to the loss crossing more than one random factor: variance grows with depth."""

SITE_POLICIES = ("weights", "products", "edges")
DRAWS = ("with_replacement", "bernoulli")
SHARES = ("sample", "batch")
SPAD_POLICIES = ("importance", "topk", "best_of")
SCORES = ("paths", "gradient", "forward", "uniform")


@dataclass(frozen=True)
class Sampling:
    """The compile-time shape of a path-sampled adjoint: which sites, how entries are drawn."""
    sites: str  # a site policy
    keep: float
    draw: str  # with_replacement | bernoulli
    share: str  # sample | batch
    scheme: str  # uniform | importance | fixed: where draw probabilities come from

    def count(self, d: int) -> int:
        """k = ceil(keep * d): the draws of a site of d entries."""
        return min(d, max(1, math.ceil(self.keep * d - 1e-12))) if self.draw == "with_replacement" else d

    def share_kept(self, d: int) -> float:
        """The share of a site's d entries its draws keep on the tape (Bernoulli: in expectation)."""
        return self.count(d) / d if self.draw == "with_replacement" else self.keep


def _check_keep(keep) -> float:
    if not is_real(keep):
        raise SpadcError(f"keep must be a number in (0, 1], got {keep!r}")
    keep = float(keep)
    if not 0.0 < keep <= 1.0:
        raise SpadcError(f"keep must be in (0, 1], got {keep}")
    return keep


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise SpadcError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Exact:
    """The exact gradient (reverse mode)."""
    name: str = "exact"

    @property
    def sampling(self) -> Sampling | None:
        return None


@dataclass(frozen=True)
class RAD:
    """Randomized AD (Oktay et al.): entries of each site drawn uniformly, reweighted: unbiased."""
    keep: float = 0.1
    policy: str = "weights"
    draw: str = "with_replacement"
    share: str = "sample"
    sites: str | None = None  # a synonym of `policy`
    name: str = field(default="rad", init=False)

    def __post_init__(self):
        object.__setattr__(self, "keep", _check_keep(self.keep))
        if self.sites is not None:
            object.__setattr__(self, "policy", self.sites)
        _check_choice("policy", self.policy, SITE_POLICIES)
        _check_choice("draw", self.draw, DRAWS)
        _check_choice("share", self.share, SHARES)

    @property
    def sampling(self) -> Sampling | None:
        if self.keep == 1.0:
            return None
        return Sampling(self.policy, self.keep, self.draw, self.share, "uniform")


@dataclass(eq=False)
class SPAD(ProcessLocalState):
    """Selective Path AD: entries drawn from per-site distributions ranked by scores.

    Our reading of Peseux et al. (IEEE Access 2023), whose full text was not available to us: see
    docs/estimators.md. `policy` is the ranking rule (importance | topk | best_of), `sites` the site
    policy, `score` what ranks entries (paths | gradient | forward | uniform): by default `paths`,
    which never needs more memory than RAD at the same keep.

    The object is stateful: `step` counts the gradients it has given (every call to `grad` and
    every training step advances it), and it keeps per model the sites' distributions (and for
    best_of, the winning key) computed at the last evaluation step."""
    keep: float = 0.1
    refresh: int = 10
    policy: str = "importance"
    score: str = "paths"
    candidates: int = 8
    floor: float = 0.1
    sites: str = "weights"
    draw: str = "with_replacement"
    share: str = "sample"
    name: str = field(default="spad", init=False)
    step: int = field(default=0, init=False)
    # model -> {variant key -> state}; weak, so a freed model's state goes with it and a new model
    # never inherits it (an address, id(model), can be reused)
    state: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False, repr=False)

    _local = "state"  # ProcessLocalState

    def __post_init__(self):
        self.keep = _check_keep(self.keep)
        _check_choice("policy", self.policy, SPAD_POLICIES)
        if self.policy == "topk" and self.score == "uniform":
            raise SpadcError("the topk policy ranks entries by a score: score='uniform' ranks nothing")
        _check_choice("score", self.score, SCORES)
        _check_choice("sites", self.sites, SITE_POLICIES)
        _check_choice("draw", self.draw, DRAWS)
        _check_choice("share", self.share, SHARES)
        for name in ("refresh", "candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpadcError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not 0.0 <= self.floor <= 1.0:
            raise SpadcError(f"floor must be a number in [0, 1], got {self.floor!r}")
        self.floor = float(self.floor)
        if self.floor == 0.0 and self.policy == "importance":
            raise SpadcError("floor must be above 0 with the importance policy: an entry scored 0 could "
                             "then never be drawn, and the estimate would be biased")
        if self.policy == "topk" and self.draw != "with_replacement":
            raise SpadcError("the topk policy keeps a fixed set of entries: draw must be with_replacement")

    @property
    def evaluation_sampling(self) -> Sampling | None:
        """What the candidates of a `paths` evaluation step draw: RAD's uniform draws."""
        return None if self.keep == 1.0 else Sampling(self.sites, self.keep, self.draw, self.share, "uniform")

    @property
    def sampling(self) -> Sampling | None:
        if self.keep == 1.0:
            return None
        if self.score == "uniform" or self.policy == "best_of":
            scheme = "uniform"
        else:
            scheme = "fixed" if self.policy == "topk" else "importance"
        return Sampling(self.sites, self.keep, self.draw, self.share, scheme)


def is_evaluation_step(spad: SPAD, step: int) -> bool:
    """Every `refresh` steps, step 0 included, SPAD re-ranks; score="uniform" never does."""
    if spad.policy == "best_of":
        return step % spad.refresh == 0
    return spad.score != "uniform" and step % spad.refresh == 0


SEEDED = "@vjp."  # a variant's key with this after it: the gradient of a VJP's surrogate (spadc/ad/vjp.py)


def variant_key(sampling: Sampling | None, score: str | None = None, policy: str | Sampling | None = None,
                seeded: tuple[str, ...] = ()) -> str:
    """The name of a gradient kernel variant: the same on the compiler's and the runtime's side.
    `seeded`: the outputs (sorted) whose cotangents, given as inputs, make the objective
    `sum_k <ct_k, out_k>` in place of the loss (a VJP's params' cotangents)."""
    suffix = f"{SEEDED}{'+'.join(seeded)}" if seeded else ""
    if sampling is None and score is None:
        return "exact" + suffix
    parts = [] if sampling is None else [_sampling_key(sampling)]
    if score is not None:  # scores alone: at the sites of `policy`, a site policy or the Sampling drawing them
        sites = "" if sampling is not None else f".{_sampling_key(policy) if isinstance(policy, Sampling) else policy}"
        parts.append(f"score.{score}{sites}")
    return "+".join(parts) + suffix


def sampling_name(sampling: Sampling) -> str:
    """A Sampling as a kernel name's part, read back by `sampling_of` (no '.' between fields: a
    keep has one)."""
    return f"{sampling.sites}:{sampling.keep!r}:{sampling.draw}:{sampling.share}:{sampling.scheme}"


def sampling_of(name: str) -> Sampling:
    sites, keep, draw, share, scheme = name.split(":")
    return Sampling(sites, float(keep), draw, share, scheme)


def _sampling_key(sampling: Sampling) -> str:
    return f"{sampling.sites}.keep{sampling.keep!r}.{sampling.draw}.{sampling.share}.{sampling.scheme}"


EXACT = Exact()


def resolve(estimator):
    """An estimator object from an object, a string ("exact", "rad", "spad", "es") or None."""
    if estimator is None:
        return EXACT
    if isinstance(estimator, str):
        named = {"exact": Exact, "rad": RAD, "spad": SPAD, "es": ES, "pes": PES}
        if estimator not in named:
            raise SpadcError(f"unknown estimator {estimator!r}; expected exact, rad, spad, es or pes")
        return named[estimator]()
    if isinstance(estimator, (Exact, RAD, SPAD, ES, PES)):
        return estimator
    raise SpadcError(f"an estimator must be spadc.Exact(), spadc.RAD(...), spadc.SPAD(...), spadc.ES(...), "
                     f"spadc.PES(...) or a name, got {estimator!r}")
