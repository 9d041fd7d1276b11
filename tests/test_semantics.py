"""What programs compute, construct by construct, against values worked out by hand or by NumPy."""

import numpy as np
import pytest

import spadc
from spadc.ir.interpret import RunOptions, evaluate

from conftest import check, run

RTOL = 1e-12
DROPOUT_DRAWS = 20000
DROPOUT_K_SIGMA = 5


def value(expression, prelude="", **inputs):
    """Evaluate `expression` as an output of a program with a dummy loss."""
    result = run(f"{prelude}\noutput out = {expression}\nloss 0.0", **inputs)
    return result.outputs["out"]


# ---- numbers and arithmetic ----------------------------------------------------------

@pytest.mark.parametrize("expression,expected", [
    ("7 // 2", 3), ("-7 // 2", -4), ("7 % 3", 1), ("-7 % 3", 2), ("7 % -3", -2),
    ("7 / 2", 3.5), ("2^10", 1024.0), ("2^-1", 0.5), ("-2^2", -4.0), ("2^3^2", 512.0),
    ("1 + 2.5", 3.5), ("max(3, 5)", 5), ("min(3, 5.5)", 3.0), ("7.5 // 2", 3.0), ("-7.5 % 2", 0.5),
    ("float(3) / 2", 1.5), ("int(2.7)", 2), ("int(-2.7)", -2), ("abs(-3)", 3), ("sign(-2.5)", -1.0),
    ("floor(-2.5)", -3.0), ("pi", np.pi), ("e", np.e),
])
def test_scalar_arithmetic(expression, expected):
    out = value(expression)
    assert out == pytest.approx(expected, rel=RTOL) and out.dtype == np.asarray(expected).dtype


def test_integer_dtype_is_kept_and_true_division_gives_float():
    assert value("3 * 4").dtype == np.int64
    assert value("3 / 4").dtype == np.float64


@pytest.mark.parametrize("expression,expected", [
    ("1 < 2", True), ("2 <= 2", True), ("3 > 4", False), ("3 >= 4", False), ("1 == 1.0", True),
    ("1 != 2", True), ("not (1 < 2)", False), ("1 < 2 and 2 < 1", False), ("1 < 2 or 2 < 1", True),
])
def test_comparisons_and_logic(expression, expected):
    assert bool(value(expression)) is expected


def test_elementwise_functions_match_numpy():
    x = np.array([-2.0, -0.5, 0.0, 0.3, 1.7])
    prelude = "input x: f64[5]"
    for name, reference in [("exp", np.exp), ("sin", np.sin), ("cos", np.cos), ("tan", np.tan),
                            ("tanh", np.tanh), ("abs", np.abs), ("sign", np.sign), ("floor", np.floor),
                            ("expm1", np.expm1), ("relu", lambda v: np.maximum(v, 0)),
                            ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
                            ("softplus", lambda v: np.log1p(np.exp(v)))]:
        assert np.allclose(value(f"{name}(x)", prelude, x=x), reference(x), rtol=RTOL, atol=1e-300), name
    y = np.array([0.1, 0.5, 1.0, 2.0, 9.0])
    for name, reference in [("log", np.log), ("log1p", np.log1p), ("sqrt", np.sqrt)]:
        assert np.allclose(value(f"{name}(x)", prelude, x=y), reference(y), rtol=RTOL), name


def test_sigmoid_and_softplus_are_stable_far_out():
    out = value("[sigmoid(-800.0), sigmoid(800.0), softplus(800.0), softplus(-800.0)]")
    assert out.tolist() == [0.0, 1.0, 800.0, 0.0]


# ---- broadcasting -----------------------------------------------------------------------

def test_broadcasting_numpy_style():
    A = np.arange(6.0).reshape(2, 3)
    b = np.array([10.0, 20.0, 30.0])
    c = np.array([[1.0], [2.0]])
    prelude = "input A: f64[2, 3]\ninput b: f64[3]\ninput c: f64[2, 1]"
    assert np.array_equal(value("A + b", prelude, A=A, b=b, c=c), A + b)
    assert np.array_equal(value("A * c", prelude, A=A, b=b, c=c), A * c)
    assert np.array_equal(value("b - c", prelude, A=A, b=b, c=c), b - c)
    assert np.array_equal(value("2 * A + 1", prelude, A=A, b=b, c=c), 2 * A + 1)


# ---- linear algebra -----------------------------------------------------------------------

def test_matmul_all_four_forms():
    rng = np.random.default_rng(0)
    A, B, v, w = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(4), rng.standard_normal(3)
    prelude = "input A: f64[3, 4]\ninput B: f64[4, 2]\ninput v: f64[4]\ninput w: f64[3]"
    kw = dict(A=A, B=B, v=v, w=w)
    assert np.allclose(value("A @ B", prelude, **kw), A @ B, rtol=RTOL)
    assert np.allclose(value("A @ v", prelude, **kw), A @ v, rtol=RTOL)
    assert np.allclose(value("w @ A", prelude, **kw), w @ A, rtol=RTOL)
    assert value("v @ v", prelude, **kw) == pytest.approx(v @ v, rel=RTOL)
    assert value("dot(v, v)", prelude, **kw) == pytest.approx(v @ v, rel=RTOL)
    assert np.allclose(value("outer(w, v)", prelude, **kw), np.outer(w, v), rtol=RTOL)
    assert np.array_equal(value("transpose(A)", prelude, **kw), A.T)


def test_integer_operands_of_matmul_become_float():
    assert np.array_equal(value("[[1, 2], [3, 4]] @ [1, 1]"), [3.0, 7.0])


# ---- reductions ------------------------------------------------------------------------------

def test_reductions_whole_and_along_an_axis():
    A = np.array([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]])
    p = "input A: f64[2, 3]"
    for name, reference in [("sum", np.sum), ("mean", np.mean), ("prod", np.prod), ("max", np.max), ("min", np.min)]:
        assert value(f"{name}(A)", p, A=A) == pytest.approx(reference(A), rel=RTOL), name
        for axis in (0, 1, -1):
            assert np.allclose(value(f"{name}(A, axis={axis})", p, A=A), reference(A, axis=axis), rtol=RTOL)
    assert value("norm(A)", p, A=A) == pytest.approx(np.sqrt(np.sum(A ** 2)), rel=RTOL)
    assert np.allclose(value("norm(A, axis=1)", p, A=A), np.sqrt(np.sum(A ** 2, axis=1)), rtol=RTOL)
    lse = np.log(np.sum(np.exp(A)))
    assert value("logsumexp(A)", p, A=A) == pytest.approx(lse, rel=RTOL)
    assert np.allclose(value("logsumexp(A, axis=0)", p, A=A), np.log(np.sum(np.exp(A), axis=0)), rtol=RTOL)


def test_logsumexp_is_stable():
    assert value("logsumexp([1000.0, 1000.0])") == pytest.approx(1000 + np.log(2), rel=RTOL)


@pytest.mark.parametrize("name,reference", [("sum", sum), ("prod", np.prod), ("mean", np.mean),
                                            ("max", max), ("min", min)])
def test_reductions_over_generators(name, reference):
    v = np.array([3.0, -1.0, 4.0, 1.5, -5.0])
    out = value(f"{name}(v[i] * v[i + 1] for i in 0..4)", "input v: f64[5]", v=v)
    assert out == pytest.approx(reference([v[i] * v[i + 1] for i in range(4)]), rel=RTOL)


def test_sum_of_a_tensor_valued_generator_adds_elementwise():
    A = np.arange(6.0).reshape(3, 2)
    assert np.array_equal(value("sum(A[i] for i in 0..3)", "input A: f64[3, 2]", A=A), A.sum(axis=0))


# ---- neural builtins ---------------------------------------------------------------------------

def test_softmax_log_softmax_cross_entropy_mse_onehot():
    z = np.array([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]])
    p = "input z: f64[2, 3]\ninput a: f64[3]\ninput k: i64"
    kw = dict(z=z, a=z[0], k=2)
    softmax = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    assert np.allclose(value("softmax(z)", p, **kw), softmax, rtol=RTOL)
    assert np.allclose(value("log_softmax(z)", p, **kw), np.log(softmax), rtol=RTOL)
    assert value("cross_entropy(a, k)", p, **kw) == pytest.approx(-np.log(softmax[0, 2]), rel=RTOL)
    assert value("mse(a, z[1])", p, **kw) == pytest.approx(np.mean((z[0] - z[1]) ** 2), rel=RTOL)
    assert np.array_equal(value("onehot(k, 4)", p, **kw), [0.0, 0.0, 1.0, 0.0])


# ---- constructors ------------------------------------------------------------------------------------

def test_constructors():
    assert np.array_equal(value("zeros(2, 3)"), np.zeros((2, 3)))
    assert np.array_equal(value("ones(4)"), np.ones(4))
    assert np.array_equal(value("fill(2.5, 2, 2)"), np.full((2, 2), 2.5))
    assert np.array_equal(value("eye(3)"), np.eye(3))
    out = value("fill(7, 3)")
    assert out.dtype == np.int64 and out.tolist() == [7, 7, 7]


# ---- indexing and slicing ----------------------------------------------------------------------------

def test_indexing_rows_columns_and_slices():
    A = np.arange(12.0).reshape(3, 4)
    p = "input A: f64[3, 4]\ninput k: i64"
    assert value("A[1, 2]", p, A=A, k=0) == 6.0
    assert np.array_equal(value("A[2]", p, A=A, k=0), A[2])
    assert np.array_equal(value("A[:, 1]", p, A=A, k=0), A[:, 1])
    assert np.array_equal(value("A[1:3, 2]", p, A=A, k=0), A[1:3, 2])
    assert np.array_equal(value("A[k][1:]", p, A=A, k=2), A[2][1:])
    assert value("A[min(k + 5, 2), max(k - 5, 0)]", p, A=A, k=1) == A[2, 0]


# ---- literals and comprehensions ----------------------------------------------------------------------

def test_tensor_literals_mix_ints_and_floats():
    out = value("[[1, 2.5], [3, 4]]")
    assert out.dtype == np.float64 and np.array_equal(out, [[1.0, 2.5], [3.0, 4.0]])


def test_comprehensions_rank_one_and_two():
    A = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(value("[i * i for i in 2..5]"), [4, 9, 16])
    out = value("[[A[i, j] * 2 for j in 0..3] for i in 0..2]", "input A: f64[2, 3]", A=A)
    assert np.array_equal(out, A * 2)
    out = value("[[A[i, j] for i in 0..2] for j in 0..3]", "input A: f64[2, 3]", A=A)
    assert np.array_equal(out, A.T)


# ---- if / where ----------------------------------------------------------------------------------------

def test_if_evaluates_only_the_taken_branch():
    p = "input v: f64[3]\ninput k: i64"
    v = np.array([1.0, 2.0, 3.0])
    # v[k] with k = 7 would be a run-time error, but that branch is not taken.
    assert value("if k < 3 then v[k] else v[k - 5]", p, v=v, k=7) == 3.0
    assert value("if k < 3 then v[k] else v[k - 5]", p, v=v, k=1) == 2.0


def test_if_branches_join_types():
    out = value("if 1 < 2 then 1 else 2.5")
    assert out.dtype == np.float64 and out == 1.0
    assert np.array_equal(value("if 1 > 2 then zeros(3) else 1"), [1.0, 1.0, 1.0])


def test_where_selects_elementwise():
    x = np.array([-1.0, 0.0, 2.0])
    assert np.array_equal(value("where(x > 0, x, 0)", "input x: f64[3]", x=x), [0.0, 0.0, 2.0])
    assert np.array_equal(value("where(x > 0, 1.0, -1.0)", "input x: f64[3]", x=x), [-1.0, -1.0, 1.0])


def test_max_min_pick_the_first_operand_on_ties_and_propagate_nan():
    out = value("[max(1.0, 1.0), min(2.0, 2.0), max(0.0 / 0.0, 1.0), max(1.0, 0.0 / 0.0)]")
    assert out[0] == 1.0 and out[1] == 2.0 and np.isnan(out[2]) and np.isnan(out[3])


# ---- loops, lets, fns --------------------------------------------------------------------------------------

def test_for_loop_with_carried_state_and_nested_loop():
    out = value("s", "let s = 0.0\nlet p = 1\nfor i in 0..4 {\n  s = s + i\n  for j in 0..2 { p = p * 2 }\n}\n"
                     "output pp = p")
    assert out == 6.0
    result = run("let p = 1\nfor i in 0..4 {\n  for j in 0..2 { p = p * 2 }\n}\noutput pp = p\nloss 0.0")
    assert result.outputs["pp"] == 256


def test_loop_body_lets_are_local_and_rebinding_outside_is_sequential():
    out = value("x", "let x = 1.0\nfor i in 0..3 {\n  let y = x * 2\n  x = y + 1\n}\nx = x * 10")
    assert out == 150.0  # 1 -> 3 -> 7 -> 15, then * 10


def test_zero_trip_loop_leaves_state_unchanged():
    assert value("x", "let x = 5.0\nfor i in 3..3 { x = x + 1 }") == 5.0


def test_fn_is_inlined_with_per_call_site_types():
    prelude = "fn twice(a) = 2 * a\nfn norm2(v) {\n  let s = sum(v * v)\n  return sqrt(s)\n}"
    assert value("twice(3)", prelude) == 6 and value("twice(3)", prelude).dtype == np.int64
    assert np.array_equal(value("twice([1.5, 2.0])", prelude), [3.0, 4.0])
    assert value("norm2([3.0, 4.0])", prelude) == 5.0


def test_fn_annotations_convert_integers_to_float():
    out = value("f(3)", "fn f(a: f64) -> f64 = a / 2")
    assert out == 1.5


def test_fns_may_call_later_fns_and_use_consts():
    assert value("f(1.0)", "fn f(a) = g(a) + K\nfn g(a) = a * 10\nconst K = 2") == 12.0


def test_consts_may_use_earlier_consts_and_builtins():
    assert value("C", "const A = 3\nconst B = A * 2 + 1\nconst C = max(A, B) // 2 + 0.5") == 3.5


def test_import_brings_consts_and_fns_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lib.spad").write_text("const K = 3\nfn triple(v) = K * v\nparam ignored: f64\nloss 0.0\n")
    program = check('import "lib.spad"\nparam w: f64 = 2\nloss triple(w)')
    assert [p.name for p in program.params] == ["w"]
    assert evaluate(program, {"w": 2.0}, {}).loss == 6.0


# ---- stop_gradient and dropout -------------------------------------------------------------------------------

def test_stop_gradient_is_the_identity_forward():
    assert np.array_equal(value("stop_gradient(x)", "input x: f64[2]", x=[1.0, 2.0]), [1.0, 2.0])


def test_dropout_is_identity_outside_training():
    x = np.arange(1.0, 6.0)
    assert np.array_equal(value("dropout(x, 0.5)", "input x: f64[5]", x=x), x)


def test_dropout_in_training_keeps_with_probability_one_minus_p_and_rescales():
    p = 0.3
    program = check(f"input x: f64[{DROPOUT_DRAWS}]\noutput y = dropout(x, {p})\nloss 0.0")
    x = np.ones(DROPOUT_DRAWS)
    y = evaluate(program, {}, {"x": x}, RunOptions(training=True, seed=11)).outputs["y"]
    kept = y != 0
    assert np.all(y[kept] == pytest.approx(1 / (1 - p), rel=RTOL))
    standard_error = np.sqrt(p * (1 - p) / DROPOUT_DRAWS)
    assert abs(kept.mean() - (1 - p)) < DROPOUT_K_SIGMA * standard_error
    again = evaluate(program, {}, {"x": x}, RunOptions(training=True, seed=11)).outputs["y"]
    other = evaluate(program, {}, {"x": x}, RunOptions(training=True, seed=12)).outputs["y"]
    assert np.array_equal(y, again) and not np.array_equal(y, other)
    per_sample = evaluate(program, {}, {"x": x}, RunOptions(training=True, seed=11, sample=1)).outputs["y"]
    assert not np.array_equal(y, per_sample)


def test_dropout_draws_afresh_per_loop_iteration():
    # The last iteration decides acc: a two-iteration loop must differ from a one-iteration one.
    one = check("input x: f64[64]\nlet acc = zeros(64)\nfor t in 0..1 {\n  acc = [acc, dropout(x, 0.5)][1]\n}\n"
                "output a = acc\nloss 0.0")
    two = check("input x: f64[64]\nlet acc = zeros(64)\nfor t in 0..2 {\n  acc = [acc, dropout(x, 0.5)][1]\n}\n"
                "output a = acc\nloss 0.0")
    options = RunOptions(training=True, seed=3)
    a1 = evaluate(one, {}, {"x": np.ones(64)}, options).outputs["a"]
    a2 = evaluate(two, {}, {"x": np.ones(64)}, options).outputs["a"]
    assert not np.array_equal(a1, a2)


def test_run_time_faults_in_integer_arithmetic():
    program = check("input k: i64\noutput q = 10 // k\nloss 0.0")
    with pytest.raises(spadc.SpadcError, match="integer division by zero"):
        evaluate(program, {}, {"k": 0})
