"""The generator of ESTIMATORS.md section 5: Philox4x64-10 against numpy.random.Philox (the oracle),
compiled draws against the reference, and distinct keys giving distinct streams."""

import numpy as np
import pytest

import spadc
from spadc import rng
from spadc.ir.core import walk_ops

MASK = (1 << 64) - 1
STREAMS = [rng.Stream(0, 0, 0, 0, 0), rng.Stream(7, 3, 0, 0, 0), rng.Stream(5, 5, 5, 5, 5),
           rng.Stream(MASK, MASK, MASK, MASK, MASK), rng.Stream(123456789, 0xDEADBEEFCAFEF00D, 17, 31, 4),
           rng.Stream(1, 2, 0, 2, 1), rng.Stream(2, 1, 2, 1, 2)]
GRID = 10  # seeds, steps and sites 0..GRID-1, samples 0..10*GRID-1: 10^5 tuples


def numpy_words(stream: rng.Stream, count: int, start: int) -> np.ndarray:
    """NumPy's Philox increments its counter before each block: start one below the block wanted."""
    block = start // 4
    counter = (block | stream.iteration << 64 | stream.sample << 128 | stream.step << 192) - 1
    counter &= (1 << 256) - 1
    generator = np.random.Philox(counter=counter, key=stream.seed | stream.site << 64)
    raw = generator.random_raw(start % 4 + count)
    return raw[start % 4:]


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("start, count", [(0, 1), (0, 4), (0, 13), (3, 6), (8, 9), (1001, 3)])
def test_words_match_numpy_philox_bit_for_bit(stream, start, count):
    np.testing.assert_array_equal(rng.words(stream, count, start), numpy_words(stream, count, start))


def test_the_published_known_answer():
    """Random123's kat_vectors: philox4x64_10, counter 0, key 0 (NumPy counts from counter + 1)."""
    out = rng.philox([np.zeros(1, np.uint64)] * 4, (0, 0))
    assert [hex(int(w[0])) for w in out] == ["0x16554d9eca36314c", "0xdb20fe9d672d0fdc",
                                             "0xd7e772cee186176b", "0x7e68b68aec7ba23b"]


def test_uniforms_are_the_top_53_bits():
    stream = rng.Stream(3, 4, 5, 6, 7)
    u = rng.uniform(stream, 100)
    np.testing.assert_array_equal(u, (rng.words(stream, 100) >> np.uint64(11)) * 2.0 ** -53)
    assert u.min() >= 0.0 and u.max() < 1.0


def test_no_two_tuples_on_a_grid_share_their_first_word():
    """The old generator folded fields with XOR: seed == step gave one and the same stream."""
    first = []
    for seed in range(GRID):
        for site in range(GRID):
            samples, steps = np.meshgrid(np.arange(10 * GRID, dtype=np.uint64), np.arange(GRID, dtype=np.uint64))
            zeros = np.zeros(samples.size, dtype=np.uint64)
            first.append(rng.philox([zeros, zeros, samples.ravel(), steps.ravel()], (seed, site))[0])
    words = np.concatenate(first)
    assert words.size == 10 ** 5 and np.unique(words).size == words.size


def test_compiled_dropout_masks_are_the_reference_stream():
    text = "input x: f64[37]\nparam w: f64 = 1.0\nlet acc = zeros(37)\nfor t in 0..3 {\n  acc = acc + dropout(x, 0.4) * w\n}\noutput a = acc\nloss sum(acc)"
    model = spadc.compile_source(text, name="drop.spad")
    program = spadc.check_text(text, "drop.spad")
    (mask_op,) = [op for op in walk_ops(program.body) if op.kind == "dropout_mask"]
    site = rng.site_id(mask_op.loc, mask_op.inlined_at)
    for seed, step, offset in [(0, 0, 0), (9, 4, 3), (MASK, MASK, 11)]:
        compiled = model.forward(x=np.ones(37), training=True, seed=seed, step=step, sample_offset=offset).outputs["a"]
        expected = sum(np.where(rng.uniform(rng.Stream(seed, site, t, offset, step), 37) >= 0.4, 1 / 0.6, 0.0)
                       for t in range(3))
        np.testing.assert_array_equal(compiled, expected)


def test_site_ids_follow_module_paths_relative_to_the_main_program(tmp_path, monkeypatch):
    """Two imported files of one base name in different folders get different ids; the working
    directory does not matter."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "lib.spad").write_text("fn f(x) = dropout(x, 0.5)\n")
    (tmp_path / "main.spad").write_text('import "a/lib.spad"\nparam w: f64[8] = 1.0\nloss sum(f(w))\n')
    (tmp_path / "other.spad").write_text('import "b/lib.spad"\nparam w: f64[8] = 1.0\nloss sum(f(w))\n')

    def site_of(path):
        program = spadc.check_file(str(path))
        (op,) = [op for op in walk_ops(program.body) if op.kind == "dropout_mask"]
        return rng.site_id(op.loc, op.inlined_at)

    here = site_of(tmp_path / "main.spad")
    assert here != site_of(tmp_path / "other.spad")
    monkeypatch.chdir(tmp_path / "a")
    assert site_of(tmp_path / "main.spad") == here
