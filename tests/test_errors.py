"""Every error class of LANGUAGE.md section 8: one message, with file, line, column, the source
line and a caret, and never a Python traceback."""

import os

import pytest

import spadc
from spadc.ir.interpret import evaluate

from conftest import check, error

LOSS = "\nloss 0.0"


def where(err):
    return (err.loc.line, err.loc.col)


def assert_rendered(err, line_text):
    """The message starts FILE:LINE:COL: and quotes the line with a caret under the column."""
    text = str(err)
    first, quoted, caret = text.splitlines()[:3]
    assert first.startswith(f"t.spad:{err.loc.line}:{err.loc.col}: error: ")
    assert quoted.strip() == line_text.strip()
    assert caret.index("^") - 4 == err.loc.col - 1


# ---- syntax --------------------------------------------------------------------------

def test_syntax_error_names_what_was_expected():
    err = error("let x = (1 + 2")
    assert "syntax error" in str(err) and "expected ')'" in str(err)
    assert_rendered(err, "let x = (1 + 2")


def test_syntax_error_at_unexpected_token():
    err = error("let x = 1 2" + LOSS)
    assert where(err) == (1, 11) and "unexpected '2'" in str(err) and "expected an operator" in str(err)
    assert_rendered(err, "let x = 1 2")


def test_syntax_error_at_end_of_input_is_just_after_last_token():
    err = error("const N = 3\nlet x = N *   # trailing comment\n\n")
    assert where(err) == (2, 12) and "unexpected end of input" in str(err)


def test_syntax_error_at_end_of_line_is_just_after_its_last_token():
    err = error("let x = 2 *   # comment\nloss 0.0")
    assert where(err) == (1, 12) and "unexpected end of line" in str(err)


def test_unexpected_character():
    err = error("let x = 3 $ 4" + LOSS)
    assert where(err) == (1, 11) and "unexpected character '$'" in str(err)


def test_keyword_used_as_name():
    err = error("let for = 3" + LOSS)
    assert where(err) == (1, 5) and "'for' is a keyword" in str(err)


def test_block_must_open_on_the_same_line():
    err = error("for i in 0..3\n{ }" + LOSS)
    assert where(err) == (1, 14) and "same line" in str(err)


def test_comparisons_do_not_chain():
    err = error("let x = 1 < 2 < 3" + LOSS)
    assert where(err) == (1, 15) and "do not chain" in str(err)


# ---- names ---------------------------------------------------------------------------

def test_undefined_name():
    err = error("let y = 2 * z" + LOSS)
    assert where(err) == (1, 13) and "undefined name `z`" in str(err)
    assert_rendered(err, "let y = 2 * z")


def test_undefined_function():
    err = error("let y = frobnicate(2)" + LOSS)
    assert where(err) == (1, 9) and "undefined function `frobnicate`" in str(err)


def test_duplicate_name_points_at_second_and_notes_first():
    err = error("input x: f64\nparam w: f64\nlet x = 2" + LOSS)
    assert where(err) == (3, 5) and "duplicate name `x`" in str(err)
    assert "t.spad:1:7: note: `x` was first defined here" in str(err)


def test_duplicate_const_and_fn():
    assert where(error("const N = 1\nconst N = 2" + LOSS)) == (2, 7)
    assert where(error("fn f(a) = a\nfn f(b) = b" + LOSS)) == (2, 4)


def test_loop_variable_may_not_reuse_a_name():
    err = error("const i = 1\nfor i in 0..3 { }" + LOSS)
    assert where(err) == (2, 5) and "duplicate name `i`" in str(err)


def test_redefining_a_builtin_function():
    err = error("fn relu(v) = v" + LOSS)
    assert where(err) == (1, 4) and "builtin" in str(err)


def test_fn_cannot_see_the_callers_variables():
    err = error("param w: f64\nfn f(v) = v * w\nloss f(2.0)")
    assert where(err) == (2, 15) and "not visible inside fn `f`" in str(err)


# ---- rebinding -----------------------------------------------------------------------

def test_rebinding_an_undeclared_name():
    err = error("x = 3" + LOSS)
    assert where(err) == (1, 1) and "`x` is not declared" in str(err) and "let x" in str(err)


def test_rebinding_an_input_or_param_or_const():
    assert "it is an input" in str(error("input x: f64\nx = 3.0" + LOSS))
    assert "it is a param" in str(error("param w: f64\nw = 3.0" + LOSS))
    assert "cannot assign to const" in str(error("const N = 1\nN = 2" + LOSS))
    assert "loop variable" in str(error("for i in 0..3 { i = 2 }" + LOSS))


def test_rebinding_must_keep_type_and_shape():
    err = error("let s = 0\nfor i in 0..3 {\n  s = s + 0.5\n}" + LOSS)
    assert where(err) == (3, 3) and "i64 but the new value is f64" in str(err) and "let s = 0.0" in str(err)
    err = error("let h = zeros(3)\nh = zeros(4)" + LOSS)
    assert "f64[3] but the new value is f64[4]" in str(err)


# ---- shapes and types ------------------------------------------------------------------

def test_shape_mismatch_names_both_shapes():
    err = error("let a = zeros(3)\nlet b = zeros(4)\nlet c = a + b" + LOSS)
    assert where(err) == (3, 11) and "f64[3] and f64[4]" in str(err)
    assert_rendered(err, "let c = a + b")


def test_matmul_mismatch_names_both_shapes():
    err = error("let A = zeros(3, 4)\nlet v = zeros(5)\nlet c = A @ v" + LOSS)
    assert where(err) == (3, 11) and "f64[3, 4]" in str(err) and "f64[5]" in str(err)


def test_type_mismatch_bool_in_arithmetic():
    err = error("let c = (1 < 2) + 1" + LOSS)
    assert where(err) == (1, 17) and "needs a number, got bool" in str(err)


def test_condition_must_be_scalar_bool():
    err = error("let c = if 1 then 2 else 3" + LOSS)
    assert where(err) == (1, 12) and "scalar bool" in str(err)


def test_index_must_be_integer():
    err = error("let v = zeros(3)\nlet y = v[1.5]" + LOSS)
    assert where(err) == (2, 11) and "i64 scalar, got f64" in str(err)


def test_fn_argument_annotation_is_checked():
    err = error("fn f(v: f64[3]) = sum(v)\nloss f(zeros(4))")
    assert where(err) == (2, 8) and "argument `v` of `f` must be f64[3], got f64[4]" in str(err)


def test_unknown_type():
    err = error("input x: f32[3]" + LOSS)
    assert where(err) == (1, 10) and "unknown type `f32`" in str(err)


def test_param_must_be_float():
    assert "must be f64" in str(error("param k: i64" + LOSS))


# ---- compile-time constants --------------------------------------------------------------

def test_non_constant_loop_bound():
    err = error("input n: i64\nfor i in 0..n { }" + LOSS)
    assert where(err) == (2, 13) and "must be known at compile time" in str(err)


def test_non_constant_shape():
    err = error("input n: i64\ninput x: f64[n]" + LOSS)
    assert where(err) == (2, 14) and "dimension must be known at compile time" in str(err)


def test_non_integer_or_non_positive_dimension():
    assert "must be an integer" in str(error("input x: f64[2.5]" + LOSS))
    assert "at least 1" in str(error("input x: f64[0]" + LOSS))


def test_const_must_be_constant():
    err = error("input x: f64\nconst N = x" + LOSS)
    assert where(err) == (2, 11) and "`x` is not a constant" in str(err)


def test_constant_integer_division_by_zero():
    err = error("const N = 4 // 0" + LOSS)
    assert where(err) == (1, 13) and "division by zero" in str(err)


# ---- indices -------------------------------------------------------------------------------

def test_constant_index_out_of_range():
    err = error("let v = zeros(3)\nlet y = v[3]" + LOSS)
    assert where(err) == (2, 11) and "index 3 is out of range for axis 0 of `v` (length 3)" in str(err)


def test_negative_constant_index_is_out_of_range():
    assert "index -1 is out of range" in str(error("let v = zeros(3)\nlet y = v[-1]" + LOSS))


def test_loop_index_proved_out_of_range():
    err = error("param x: f64[10]\nloss sum(x[i + 1] for i in 0..10)")
    assert where(err) == (2, 12) and "index reaches 10" in str(err)


def test_slice_out_of_range():
    err = error("let v = zeros(3)\nlet y = v[1:5]" + LOSS)
    assert where(err) == (2, 11) and "slice 1:5 is out of range" in str(err)


def test_too_many_indices():
    assert "too many indices" in str(error("let v = zeros(3)\nlet y = v[0, 0]" + LOSS))


def test_index_in_untaken_branch_is_not_a_compile_error():
    # Only the taken branch runs, so a bad index there cannot be reported before it runs.
    check("param x: f64[3]\nloss sum(if i < 3 then x[i] else x[i + 5] for i in 0..4)")


# ---- calls ---------------------------------------------------------------------------------

def test_wrong_number_of_arguments_to_builtin():
    err = error("let y = exp(1, 2)" + LOSS)
    assert where(err) == (1, 9) and "`exp` takes 1 argument, got 2" in str(err)


def test_wrong_number_of_arguments_to_fn():
    err = error("fn f(a, b) = a + b\nloss f(1.0)")
    assert where(err) == (2, 6) and "`f` takes 2 arguments, got 1" in str(err)


def test_unknown_keyword():
    err = error("let y = sum(zeros(3), axes=0)" + LOSS)
    assert where(err) == (1, 23) and "no keyword `axes`" in str(err)


def test_direct_recursion_reported_at_the_recursive_call():
    err = error("fn f(a) = if a > 0 then f(a - 1) else 0\nloss 0.0")
    assert where(err) == (1, 25) and "recursive call: `f` calls itself" in str(err)


def test_mutual_recursion_reported_at_the_closing_call():
    err = error("fn f(a) = g(a)\nfn g(a) = 2 * f(a)\nloss 0.0")
    assert where(err) == (2, 15) and "f -> g -> f" in str(err)


def test_recursion_is_found_even_if_never_called():
    assert "recursive" in str(error("fn f(a) = f(a)\nloss 0.0"))


# ---- the loss ------------------------------------------------------------------------------

def test_missing_loss_is_reported_at_the_end():
    err = error("param w: f64\nlet y = w * 2  # done\n")
    assert where(err) == (2, 14) and "no `loss`" in str(err)


def test_second_loss():
    err = error("param w: f64\nloss w\nloss w * 2")
    assert where(err) == (3, 1) and "second `loss`" in str(err) and "t.spad:2:1: note" in str(err)


def test_non_scalar_loss():
    err = error("param w: f64[3]\nloss w * 2")
    assert where(err) == (2, 6) and "must be a scalar, got f64[3]" in str(err)


def test_statements_in_the_wrong_place():
    assert "`output` is not allowed inside a `for` loop" in str(error("for i in 0..2 {\n output y = 1\n}" + LOSS))
    assert "`loss` is not allowed inside fn `f`" in str(error("fn f(a) {\n loss a\n return a\n}\nloss f(1.0)"))
    assert "only allowed at the end of a function" in str(error("return 1" + LOSS))


# ---- imports -------------------------------------------------------------------------------

def test_import_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.spad").write_text('import "b.spad"\nconst A = 1\n')
    (tmp_path / "b.spad").write_text('import "a.spad"\n')
    err = error('import "a.spad"' + LOSS)
    assert "import cycle" in str(err) and err.loc.line == 1
    err = error('import "missing.spad"' + LOSS)
    assert where(err) == (1, 1) and "cannot import" in str(err)


# ---- run-time errors ----------------------------------------------------------------------

def test_run_time_index_error_names_the_source_line():
    program = check("input k: i64\nparam x: f64[3]\nloss x[k]")
    with pytest.raises(spadc.SpadcError) as info:
        evaluate(program, {"x": [1.0, 2.0, 3.0]}, {"k": 7})
    assert "t.spad:3:6: error: run-time error" in str(info.value) and "index 7 is out of range" in str(info.value)


def test_label_out_of_range_is_a_run_time_error():
    program = check("input label: i64\nparam z: f64[4]\nloss cross_entropy(z, label)")
    with pytest.raises(spadc.SpadcError) as info:
        evaluate(program, {"z": [0.0] * 4}, {"label": 4})
    assert "label" in str(info.value) and "out of range" in str(info.value) and info.value.loc.line == 3


def test_no_user_mistake_in_the_examples_corpus_gives_a_traceback():
    # Truncations of a real program hit many parser states; every one must be a SpadcError.
    text = open(os.path.join(os.path.dirname(__file__), "..", "examples", "irnn.spad")).read()
    for cut in range(0, len(text), 7):
        try:
            check(text[:cut])
        except spadc.SpadcError as err:
            assert str(err)


FUZZ_SEED = 2026
FUZZ_MUTATIONS = 1500 if os.environ.get("SPADC_LONG") == "1" else 500  # (tests/fuzzing.py mutates far more)
FUZZ_TOKENS = ["+", "-", "*", "@", "^", "(", ")", "[", "]", ",", ":", "..", "0", "1", "2.5", "x", "i", "N", "sum",
               "for", "in", "{", "}", "\n", "let", "=", "if", "then", "else", "[i for i in 0..3]", "max", "zeros(3)",
               "-1", "//", "%", "<", "and", "not", "true", "fn", "loss", "output", "param", "h"]


def test_mutated_programs_give_spadc_errors_never_other_exceptions():
    """Random edits of the examples, through the checker and the adjoint's construction: a user
    mistake may only ever surface as a SpadcError."""
    import glob
    import random
    from spadc.ad.reverse import gradient
    rng = random.Random(FUZZ_SEED)
    folder = os.path.join(os.path.dirname(__file__), "..", "examples")
    texts = [open(p).read() for p in sorted(glob.glob(os.path.join(folder, "*.spad")))]
    for _ in range(FUZZ_MUTATIONS):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                text = text[:at] + text[at + rng.randint(1, 4):]
            else:
                text = text[:at] + " " + rng.choice(FUZZ_TOKENS) + " " + text[at:]
        try:
            gradient(spadc.frontend.lower(spadc.check_text(text, "fuzz.spad")))
        except spadc.SpadcError as err:
            assert str(err).startswith(("fuzz.spad:", "cannot import")) or "fuzz.spad" in str(err), str(err)


@pytest.mark.parametrize("text, message", [
    ("param w: f64[3]\nloss sum(relU(w))", "undefined function `relU`; did you mean `relu`?"),
    ("param weight: f64\nloss wieght * 2", "undefined name `wieght`; did you mean `weight`?"),
    ("fn square(v) = v * v\nparam w: f64\nloss sqare(w)", "did you mean `square`?"),
    ("param w: f64\nloss zzz", "undefined name `zzz`" + LOSS[:0]),
    ("def f(x) = x\nparam w: f64\nloss w", "functions are declared with `fn`"),
    ("param w: f64\nloss w ** 2", "powers are written `^`"),
    ("param W: f64[2, 2]\nloss sum(W.T)", "a transpose is written `transpose(W)`"),
    ("param W: f64[2, 2]\nloss W.sum()", "values have no attributes or methods"),
    # Python's constructs (LANGUAGE.md section 10: hints, not silence)
    ("param w: f64\nprint(w)\nloss w", "there is no `print`: declare the value an `output`"),
    ("param w: f64\nwhile w > 0 { w = w - 1 }\nloss w", "a `while` loop needs a bound, as in `while err > 1e-9 max 50"),
    ("class Model:\nparam w: f64\nloss w", "there are no classes"),
    ("import numpy as np\nparam w: f64\nloss w", "`import` takes a .spad file"),
    ("from math import exp\nparam w: f64\nloss w", "`import` takes a .spad file"),
    ("param w: f64\nlet v = w\nv += 1\nloss v", "there is no `+=`: write `x = x + e`"),
    ("param w: f64\nlet v = w\nfor i in range(3) { v = v * w }\nloss v", "ranges are written `lo..hi`"),
    ("param w: f64\nloss w if w > 0 else 0.0", "a conditional expression is written `if c then a else b`"),
    ("param w: f64\nlet f = lambda z: z\nloss w", "there are no lambdas"),
    ("param w: f64\nloss where(True, w, 0.0)", "undefined name `True`; booleans are written `true` and `false`"),
    ("param w: f64\nloss None", "there is no `None`"),
    ("param w: f64\nloss np", "NumPy's functions are builtins"),
    ("param w: f64\nreturn w", "`return` is only allowed at the end of a function"),
])
def test_common_mistakes_get_a_hint(text, message):
    err = error(text)
    assert message in str(err) and err.loc is not None
    if message.startswith("undefined name `zzz`"):
        assert "did you mean" not in str(err)
