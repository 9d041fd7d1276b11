"""Hostile programs: each is one located `SpadcError` (or compiles and runs correctly), never a
traceback, a silent wrong value, a hang or a huge allocation."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import spadc
from spadc.syntax.parser import MAX_NESTING

from conftest import check, quick

NESTING = 300  # deeper than the parser's limit (200 levels)
SHALLOW = 60  # well within it: must compile, differentiate and run
CHECK_PEAK_BYTES = 20 << 20  # what checking a program with a 74.5 GiB param may allocate at most


def located(text: str, max_memory=None) -> spadc.SpadcError:
    """The error compiling `text` raises; it must carry a place."""
    with pytest.raises(spadc.SpadcError) as info:
        spadc.compile_source(text, name="h.spad", max_memory=max_memory)
    assert info.value.loc is not None, f"no place in: {info.value}"
    assert str(info.value).startswith(f"h.spad:{info.value.loc.line}:{info.value.loc.col}: error: ")
    return info.value


@pytest.mark.parametrize("loss", ["p", "((p))", "x"])
def test_a_loss_that_is_a_param_or_an_input_compiles_and_differentiates(loss):
    model = spadc.compile_source(f"input x: f64\nparam p: f64 = 2.5\nloss {loss}\n", name="h.spad")
    expected_value, expected_gradient = (7.0, 0.0) if loss == "x" else (2.5, 1.0)
    assert model.loss(x=7.0) == expected_value
    assert model.grad(x=7.0) == (expected_value, {"p": expected_gradient})
    with pytest.warns(UserWarning, match="no site to gate under the `edges` site policy"):  # nothing to sample
        assert model.grad(x=7.0, estimator=spadc.RAD(keep=0.5, policy="edges"))[1]["p"] == expected_gradient


@pytest.mark.parametrize("literal, message", [
    ("99999999999999999999", "does not fit in i64"),
    ("9" * 5000, "does not fit in i64"),
    ("1" + "0" * 400 + ".0", "too large for f64"),
    ("1e400", "too large for f64"),
])
def test_literals_out_of_range(literal, message):
    error = located(f"param p: f64\nconst N = {literal}\nloss p\n")
    assert message in str(error) and error.loc.line == 2 and error.loc.col == 11


def test_the_largest_i64_literal_is_fine():
    model = spadc.compile_source("const N = 9223372036854775807\nparam p: f64 = 1.0\nloss p * float(N // N)\n")
    assert model.loss() == 1.0


@pytest.mark.parametrize("text, column", [
    ("const N = 4294967296 * 4294967296\nparam p: f64\nloss p * float(N)", 22),
    ("param p: f64[4611686018427387904 * 4 + 2]\nloss sum(p)", 34),
    ("const M = 9223372036854775807\nparam p: f64\nloss p * float(M + 1)", 18),
    ("const M = 9223372036854775807\nparam p: f64\nloss p * float(-M - 1 - 1)", 23),
    ("const M = 9223372036854775807\nparam p: f64\nloss p * float(abs(-M - 1))", 16),
    ("const M = 3037000500\nparam p: f64\nloss p * float(sum([M * M, M]))", 23),
])
def test_constant_integer_overflow_is_an_error_not_a_wrapped_value(text, column):
    error = located(text)
    assert "integer overflow" in str(error) and error.loc.col == column


@pytest.mark.parametrize("init, message", [
    ("uniform(0, 1e308 * 10)", "must be finite"),
    ("uniform(-1e308, 1e308)", "too wide"),
    ("normal(0, 1e308 * 10)", "must be finite"),
    ("normal(1e308 * 10, 1)", "must be finite"),
])
def test_infinite_initialisers(init, message):
    assert message in str(located(f"param p: f64 ~ {init}\nloss p * p\n"))


def test_rank_above_the_limit():
    error = located(f"param p: f64[{', '.join(['1'] * 70)}]\nloss sum(p)\n")
    assert "at most 32 dimensions" in str(error)


NESTED = {
    "for": lambda n: "param p: f64 = 1.0\nlet a = p\n" + "".join(f"for i{k} in 0..2 {{\n" for k in range(n))
                     + "a = a * 1.0\n" + "}\n" * n + "loss a\n",
    "if": lambda n: "param p: f64 = 1.0\nloss " + "if p > 0 then " * n + "p" + " else p" * n + "\n",
    "power": lambda n: "param p: f64 = 1.0\nloss " + "p^" * n + "p\n",
    "tanh": lambda n: "param p: f64 = 1.0\nloss " + "tanh(" * n + "p" + ")" * n + "\n",
    "negation": lambda n: "param p: f64 = 1.0\nloss " + "-" * n + "p\n",
    "parenthesised sum": lambda n: "param p: f64 = 1.0\nloss " + "(" * n + "p" + " + p)" * n + "\n",
}
FLAT_TERMS = 2 * MAX_NESTING  # a flat sum is one level of nesting however long (199 terms were refused once)


def test_a_long_flat_sum_and_product_compile_and_differentiate():
    text = ("param p: f64 = 1.0\nparam q: f64 = 1.01\nloss " + " + ".join(f"p * {k}.0" for k in range(FLAT_TERMS))
            + " - " + " * ".join(["q"] * 300) + "\n")
    loss, grads = spadc.compile_source(text, name="h.spad").grad()
    assert grads["p"] == sum(range(FLAT_TERMS)) and grads["q"] == pytest.approx(-300 * 1.01 ** 299, rel=1e-12)
    assert loss == pytest.approx(sum(range(FLAT_TERMS)) - 1.01 ** 300, rel=1e-12)


PARAM_CHAIN_IN_LANES = """
import sys, warnings
import numpy as np
import spadc
warnings.simplefilter("ignore")
model = spadc.compile_source(sys.argv[1], name="h.spad")
model.init_params(seed=0)
loss, grads = model.grad(x=np.ones((4, 3)), estimator=spadc.RAD(keep=0.5, policy="edges"), seed=1)
print(loss)
"""
COMPILE_SECONDS = 60  # it compiles in under a second; LLVM 22 once searched for ever


def test_a_chain_of_functions_of_a_param_in_a_lane_loop_compiles():
    """The fuzzer's seed 1103586: without `params` declared noalias, the chain stayed in a lane
    loop of the sampled gradient, and LLVM's loop vectoriser never finished with it."""
    text = ("input x: f64[3]\nparam p1: f64\nparam p7: f64[3, 3]\n"
            "let h9 = prod(tanh(exp(tanh(p1))) for i11 in 0..3)\nloss h9 + sum(p7 @ x)\n")
    child = subprocess.run([sys.executable, "-c", PARAM_CHAIN_IN_LANES, text], capture_output=True, text=True,
                           timeout=COMPILE_SECONDS)
    assert child.returncode == 0 and np.isfinite(float(child.stdout)), child.stderr


@pytest.mark.parametrize("kind", sorted(NESTED))
def test_deep_nesting_is_a_located_error(kind):
    assert "nested too deeply" in str(located(NESTED[kind](NESTING)))


# Quick: nested statements, nested expressions, nested calls (the others nest as these do).
@pytest.mark.parametrize("kind", quick(sorted(NESTED), ("for", "if", "tanh")))
def test_nesting_within_the_limit_compiles_and_differentiates(kind):
    model = spadc.compile_source(NESTED[kind](SHALLOW // 2 if kind == "for" else SHALLOW), name="h.spad")
    loss, grads = model.grad()
    assert np.isfinite(loss) and np.isfinite(grads["p"])


def test_deep_chains_of_fns_and_imports(tmp_path):
    chain = "".join(f"fn f{k}(x) = f{k + 1}(x) * 1.0\n" for k in range(40)) + "fn f40(x) = x\n"
    assert "calls are nested more than" in str(located(chain + "param p: f64\nloss f0(p)\n"))
    for k in range(40):
        (tmp_path / f"m{k}.spad").write_text(f'import "m{k + 1}.spad"\n')
    (tmp_path / "m40.spad").write_text("const C = 1\n")
    (tmp_path / "main.spad").write_text('import "m0.spad"\nparam p: f64\nloss p\n')
    with pytest.raises(spadc.SpadcError, match="imports are chained more than"):
        spadc.compile_file(str(tmp_path / "main.spad"))


def test_long_names_do_not_clash_in_llvm():
    """LLVM truncates local names over 1024 characters: two such names once became one value."""
    text = ("param p: f64 = 1.0\nlet " + "a" * 3000 + " = p * 2.0\nlet h = p\nfor " + "t" * 2000
            + " in 0..3 {\n  h = h * " + "a" * 3000 + "\n}\nloss h\n")
    assert spadc.compile_source(text).grad() == (8.0, {"p": 32.0})  # 8 p^4


def test_imports_that_are_not_utf8_or_not_regular_files(tmp_path):
    (tmp_path / "latin1.spad").write_bytes(b"fn f(x) = x\n# caf\xe9\n")
    (tmp_path / "main.spad").write_text('import "latin1.spad"\nparam p: f64\nloss p\n')
    with pytest.raises(spadc.SpadcError, match=r"not UTF-8 text \(byte 0xe9 on line 2\)") as info:
        spadc.compile_file(str(tmp_path / "main.spad"))
    assert info.value.loc.line == 1
    (tmp_path / "stdin.spad").write_text('import "/dev/stdin"\nparam p: f64\nloss p\n')
    result = subprocess.run([sys.executable, "-m", "spadc", "check", str(tmp_path / "stdin.spad")],
                            capture_output=True, text=True, timeout=60)  # blocked forever before
    assert result.returncode == 1 and "not a regular file" in result.stderr


def test_checking_a_huge_param_allocates_no_storage():
    text = "param W: f64[100000, 100000]\nloss sum(W)\n"
    error = located(text)
    assert "74.5 GiB" in str(error) and "memory limit" in str(error) and error.loc.col == 10
    tracemalloc.start()
    try:
        spadc.frontend.lower(spadc.frontend.check_source(spadc.errors.Source("h.spad", text), ".", 1 << 40))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CHECK_PEAK_BYTES


def test_params_over_a_small_limit_name_the_param():
    error = located("param a: f64[1000]\nparam b: f64[1000]\nloss sum(a) + sum(b)\n", max_memory=12000)
    assert "the params up to `b` need 15.6 KiB" in str(error) and error.loc.line == 2


def test_a_billion_step_tape_is_refused_before_allocation_or_checkpointed():
    text = "param p: f64[100] = 1.0\nlet h = p\nfor t in 0..1000000000 {\n  h = tanh(h * p)\n}\nloss sum(h)\n"
    with pytest.raises(spadc.SpadcError) as info:
        spadc.compile_source(text, name="h.spad", checkpoint="none")
    assert "gradient kernel needs a workspace of" in str(info.value) and "1,000,000,000 iterations" in str(info.value)
    assert str(info.value).startswith("h.spad:3:1: error: ")
    # By default the loop is cut into segments that fit (tests/test_checkpointing.py runs such plans).
    compiled = spadc.api.build(spadc.frontend.text_source(text, "h.spad"), ".", max_memory="64M")
    assert compiled.layout["variants"]["exact"]["workspace"] <= 64 << 20
    assert compiled.layout["variants"]["exact"]["forward_replays"] >= 1
    model = spadc.compile_source(text.replace("1000000000", "10"), max_memory="64M")
    assert np.isfinite(model.grad()[0])


def test_the_memory_limit_setting_is_validated(monkeypatch):
    for bad in ("lots", "-5", 0, True):
        with pytest.raises(spadc.SpadcError, match="max_memory"):
            spadc.compile_source("param p: f64\nloss p", max_memory=bad)
    monkeypatch.setenv("SPADC_MAX_MEMORY", "1K")
    assert "memory limit of 1.0 KiB" in str(located("param p: f64[1000]\nloss sum(p)"))


def test_an_input_named_like_a_call_option_warns_and_is_callable_through_inputs():
    with pytest.warns(spadc.SpadcWarning) as caught:
        model = spadc.compile_source("input seed: f64\ninput step: f64\nparam p: f64 = 2.0\nloss p * seed + step\n",
                                     name="opt.spad")
    assert [str(w.message).split(": ")[2] for w in caught] == [
        f"input `{name}` is named like an option of `forward` and `grad`" for name in ("seed", "step")]
    assert model.loss(inputs={"seed": 3.0, "step": 1.0}) == 7.0
    assert model.grad(inputs={"seed": 3.0, "step": 1.0}, seed=5) == (7.0, {"p": 3.0})
    with pytest.raises(spadc.SpadcError, match="missing input `seed`"):
        model.loss(inputs={"step": 1.0})


def test_check_still_compiles_what_it_accepts():
    """The checker accepts the program; everything downstream must too (once: StopIteration)."""
    program = check("param p: f64\nloss ((p))")
    assert program.loss is program.params[0].value


def test_run_time_index_overflow_is_caught_by_the_bounds_check():
    """i64 arithmetic on inputs wraps as in C and NumPy; a wrapped index is still bounds-checked,
    so it is an error (or, if it wraps into range, a valid entry), never a read out of bounds."""
    model = spadc.compile_source("input k: i64\nparam x: f64[4] = [1, 2, 3, 4]\nloss x[k * 4611686018427387904 + 1]",
                                 name="o.spad")
    assert model.loss(k=0) == 2.0
    with pytest.raises(spadc.SpadcError, match=r"index -4611686018427387903 is out of range for axis 0 of length 4"):
        model.loss(k=3)


# ---- found by a fuzzer with JAX as its oracle (issue 29) -----------------------------------------

def test_a_huge_constant_constructor_is_refused_before_anything_is_allocated():
    tracemalloc.start()
    try:
        error = located("param p: f64\nlet z = zeros(4294967296, 4294967296)\nloss p + sum(z)\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "memory limit" in str(error) and (error.loc.line, error.loc.col) == (2, 9)
    assert peak < CHECK_PEAK_BYTES
    # Under the limit but large, a constant is computed at run time rather than by the compiler.
    model = spadc.compile_source("param p: f64\nloss p * sum(ones(2048, 1024))\n", name="h.spad", max_memory="1G")
    assert model.grad(params={"p": 1.0}) == (2048.0 * 1024, {"p": 2048.0 * 1024})
    error = located("param p: f64\nloss p * sum(ones(2048, 1024))\n", max_memory="8M")
    assert "16.0 MiB" in str(error) and error.loc.col == 14


def test_a_param_name_longer_than_llvm_keeps_compiles_to_every_kernel():
    name = "w" * 1100
    text = f"param {name}: f64[2]\ninput x: f64[2]\nloss sum({name} * {name} * x)\n"
    model = spadc.compile_source(text, name="h.spad")
    model.set_params({name: np.array([1.0, 2.0])})
    x = np.array([3.0, 4.0])
    assert model.grad(x=x)[1][name].tolist() == [6.0, 16.0]  # 2 w x
    assert model.hvp(np.ones(2), x=x)[name].tolist() == [6.0, 8.0]  # 2 x


def test_an_empty_fn_body_is_located():
    error = located("fn f(a) {}\nparam p: f64\nloss f(p)\n")
    assert "empty body" in str(error) and (error.loc.line, error.loc.col) == (1, 4)


@pytest.mark.parametrize("text", ["const pi = 3\nparam p: f64\nloss p * pi\n", "fn e(a) = a\nparam p: f64\nloss e(p)\n"])
def test_a_const_or_fn_may_not_redefine_a_builtin_constant(text):
    assert "builtin constant" in str(located(text))


def test_a_variable_may_still_shadow_a_builtin_constant():  # docs/language-choices.md
    assert spadc.compile_source("param p: f64 = 1.0\nlet e = 2.0\nloss p * e\n").loss() == 2.0


def test_a_diamond_import_loads_its_base_once(tmp_path):
    (tmp_path / "base.spad").write_text("const K = 2\nfn base(a) = a * K\n")
    (tmp_path / "left.spad").write_text('import "base.spad"\nfn left(a) = base(a) + 1\n')
    (tmp_path / "right.spad").write_text('import "base.spad"\nfn right(a) = base(a) - 1\n')
    (tmp_path / "main.spad").write_text('import "left.spad"\nimport "right.spad"\nparam p: f64 = 3.0\n'
                                        'loss left(p) * right(p) * K\n')
    assert spadc.compile_file(tmp_path / "main.spad").loss() == 7.0 * 5.0 * 2.0
    (tmp_path / "other.spad").write_text("const K = 3\n")  # a different K: still a duplicate
    (tmp_path / "clash.spad").write_text('import "left.spad"\nimport "other.spad"\nparam p: f64\nloss left(p)\n')
    with pytest.raises(spadc.SpadcError, match="duplicate name `K` imported from \"other.spad\"") as info:
        spadc.compile_file(tmp_path / "clash.spad")
    assert (info.value.loc.line, info.value.loc.col) == (2, 1)


INFINITE_ROWS = np.array([[np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [np.inf, np.inf, 0.0],
                          [-np.inf, 1.0, 2.0], [np.nan, 1.0, 2.0], [1000.0, 1.0, -1000.0]])


def test_logsumexp_and_log_softmax_of_infinities_are_the_limits():
    """As SciPy: logsumexp is the max when the max is infinite; log_softmax is x - logsumexp (NaN for
    an entry inf - inf); softmax is exp(log_softmax). Worked out by hand."""
    model = spadc.compile_source("input x: f64[3]\nparam p: f64\noutput l = logsumexp(x)\noutput s = softmax(x)\n"
                                 "output q = log_softmax(x)\nloss p\n", name="h.spad")
    with np.errstate(all="ignore"):
        out = model.forward(x=INFINITE_ROWS).outputs
        big = 1000.0 + np.log1p(np.exp(-999.0) + np.exp(-2000.0))
        want = np.array([np.inf, -np.inf, np.inf, 2.0 + np.log1p(np.exp(-1.0)), np.nan, big])
        np.testing.assert_allclose(out["l"], want, rtol=1e-15)  # infinities and NaN where they are, exactly
        np.testing.assert_allclose(out["q"], INFINITE_ROWS - want[:, None], rtol=1e-15)
        np.testing.assert_allclose(out["s"], np.exp(INFINITE_ROWS - want[:, None]), rtol=1e-15)
    assert out["s"][0].tolist()[1:] == [0.0, 0.0] and out["q"][3][0] == -np.inf
