"""The counter-based random generator of ESTIMATORS.md section 5: Philox4x64-10, NumPy reference.

A draw is a pure function of its place: no state, so the same place gives the same bits however a
batch is split or whatever order samples run in. The compiled code (spadc/backend/emitters.py)
emits the same arithmetic, and `numpy.random.Philox` is the oracle of both (tests/test_rng.py).

Invariants:
- Philox4x64-10 (Salmon et al., SC 2011): a 128-bit key, a 256-bit counter, 10 rounds, four 64-bit
  output words per counter value. The 64x64 -> 128-bit products are formed from 32-bit halves, as
  in the compiled code, so that no target needs a 128-bit multiply (a library call on bare metal).
- The key is (seed, site id); the counter is (entry block, loop iteration, sample, step). Every field
  keeps its own word, so no two different (seed, site, iteration, sample, step, entry) share a
  value. Entry j of a stream is word j % 4 of block j // 4; its uniform double is the top 53 bits
  divided by 2^53, in [0, 1).
- The loop iteration is the flat index of the enclosing loop indices: entering a loop (or a
  comprehension) of n iterations from lo, `flat = flat * n + (i - lo)`, starting at 0.
- `site_id` is stable across runs, machines and working directories, and distinct for distinct
  sources: it hashes each module's path relative to the main program's directory (`Source.module`),
  the line and column of the op, the call sites it was inlined through, which of the ops lowered
  from that place it is, and the operand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

ROUNDS = 10
MULTIPLIERS = (0xD2E7470EE14C6C93, 0xCA5A826395121157)
WEYL = (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)  # the key's increments between rounds
MASK64 = (1 << 64) - 1
_LOW32 = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


@dataclass(frozen=True)
class Stream:
    """The place of a sequence of draws: everything but the entry."""
    seed: int
    site: int
    iteration: int
    sample: int
    step: int


def mulhilo(a: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit words of the 128-bit products a * b, from 32-bit halves."""
    b = np.uint64(b)
    a_lo, a_hi = a & _LOW32, a >> _32
    b_lo, b_hi = b & _LOW32, b >> _32
    with np.errstate(over="ignore"):
        low = a * b
        cross1, cross2 = a_lo * b_hi, a_hi * b_lo
        middle = ((a_lo * b_lo) >> _32) + (cross1 & _LOW32) + (cross2 & _LOW32)
        high = a_hi * b_hi + (cross1 >> _32) + (cross2 >> _32) + (middle >> _32)
    return high, low


def philox(counter: list[np.ndarray], key: tuple[int, int]) -> list[np.ndarray]:
    """Philox4x64-10 of counters given as four uint64 arrays (one per word); four output arrays."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = key[0] & MASK64, key[1] & MASK64
    for round_ in range(ROUNDS):
        if round_:
            k0, k1 = (k0 + WEYL[0]) & MASK64, (k1 + WEYL[1]) & MASK64
        high0, low0 = mulhilo(c0, MULTIPLIERS[0])
        high1, low1 = mulhilo(c2, MULTIPLIERS[1])
        c0, c1, c2, c3 = high1 ^ c1 ^ np.uint64(k0), low1, high0 ^ c3 ^ np.uint64(k1), low0
    return [c0, c1, c2, c3]


def words(stream: Stream, count: int, start: int = 0) -> np.ndarray:
    """Entries start..start+count-1 of a stream, as uint64 words."""
    entries = np.arange(start, start + count, dtype=np.uint64)
    blocks = entries >> np.uint64(2)
    fields = [blocks] + [np.full(count, value & MASK64, dtype=np.uint64)
                         for value in (stream.iteration, stream.sample, stream.step)]
    out = philox(fields, (stream.seed, stream.site))
    lanes = (entries & np.uint64(3)).astype(np.int64)
    return np.choose(lanes, out)


def uniform(stream: Stream, count: int, start: int = 0) -> np.ndarray:
    """Entries start..start+count-1 of a stream, as doubles in [0, 1)."""
    return (words(stream, count, start) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def site_id(loc, inlined_at=(), operand: int = 0, op: str = "") -> int:
    """`op` tells apart the ops one source location lowers to (`mse` is a sub, a mul, a sum...)."""
    chain = [loc, *inlined_at]
    text = "/".join(f"{l.source.module}:{l.line}:{l.col}" for l in chain) + f"{op}#{operand}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
