"""Every construct of LANGUAGE.md sections 2-7 parses to the AST it means."""

import pytest

from spadc.syntax import ast

from conftest import parse_text


def expr(text):
    (stmt,) = parse_text(f"let v = {text}")
    return stmt.value


def shape(node):
    """A compact, position-free rendering of an expression tree."""
    if isinstance(node, ast.Number):
        return node.value
    if isinstance(node, ast.Bool):
        return node.value
    if isinstance(node, ast.Var):
        return node.name
    if isinstance(node, ast.Unary):
        return (node.op, shape(node.operand))
    if isinstance(node, ast.Binary):
        return (node.op, shape(node.lhs), shape(node.rhs))
    if isinstance(node, ast.IfExpr):
        return ("if", shape(node.cond), shape(node.then), shape(node.orelse))
    if isinstance(node, ast.Call):
        return ("call", node.name, *map(shape, node.args), *((k.name, shape(k.value)) for k in node.kwargs))
    if isinstance(node, ast.GenCall):
        return ("gen", node.name, shape(node.body), node.var, shape(node.range.lo), shape(node.range.hi))
    if isinstance(node, ast.ListLit):
        return ["list", *map(shape, node.elements)]
    if isinstance(node, ast.Comprehension):
        return ["comp", shape(node.body), node.var, shape(node.range.lo), shape(node.range.hi)]
    if isinstance(node, ast.Index):
        return ("index", shape(node.base), *map(shape, node.items))
    if isinstance(node, ast.Slice):
        return ("slice", shape(node.lo) if node.lo else None, shape(node.hi) if node.hi else None)
    raise AssertionError(node)


# ---- lexical rules ---------------------------------------------------------------

def test_comments_run_to_end_of_line():
    stmts = parse_text("# a comment\nconst N = 3  # trailing\n# another\n")
    assert len(stmts) == 1 and stmts[0].name == "N"


@pytest.mark.parametrize("text,value", [("42", 42), ("1.5", 1.5), ("1e-3", 1e-3), ("3.0e8", 3.0e8), ("2E3", 2000.0)])
def test_numbers(text, value):
    node = expr(text)
    assert node.value == value and type(node.value) is type(value)


def test_range_is_not_a_float():
    (stmt,) = parse_text("for i in 0..N { }")
    assert shape(stmt.range.lo) == 0 and shape(stmt.range.hi) == "N"


def test_names_may_contain_digits_and_underscores():
    assert shape(expr("_a1 + B_2")) == ("+", "_a1", "B_2")


def test_statements_end_at_newline_or_semicolon():
    stmts = parse_text("let a = 1; let b = 2\nlet c = 3;\n\n;let d = 4")
    assert [s.name for s in stmts] == ["a", "b", "c", "d"]


def test_newlines_are_free_inside_parentheses_and_brackets():
    node = expr("f(1,\n 2) + [1,\n 2][0] + (3\n + 4)")
    assert shape(node) == ("+", ("+", ("call", "f", 1, 2), ("index", ["list", 1, 2], 0)), ("+", 3, 4))


# ---- declarations ------------------------------------------------------------------

def test_const():
    (stmt,) = parse_text("const H = 2 * D + 1")
    assert isinstance(stmt, ast.Const) and shape(stmt.value) == ("+", ("*", 2, "D"), 1)


def test_input_types():
    a, b, c = parse_text("input x: f64[D]\ninput label: i64\ninput m: f64[2, 3]")
    assert (a.type.elem, [shape(d) for d in a.type.dims]) == ("f64", ["D"])
    assert (b.type.elem, b.type.dims) == ("i64", ())
    assert [shape(d) for d in c.type.dims] == [2, 3]


def test_param_forms():
    plain, filled, dist, bounded, both = parse_text(
        "param b: f64[C]\nparam b1: f64[H] = 0\nparam W: f64[H, D] ~ normal(0, 0.125)\n"
        "param x: f64[N] in [-5, 5]\nparam y: f64 in [0, 1] ~ uniform(0, 1)")
    assert plain.init is None and plain.bounds is None
    assert isinstance(filled.init, ast.InitValue) and shape(filled.init.value) == 0
    assert isinstance(dist.init, ast.InitDist) and dist.init.dist == "normal"
    assert [shape(a) for a in dist.init.args] == [0, 0.125]
    assert [shape(b) for b in bounded.bounds] == [("-", 5), 5]
    assert both.bounds is not None and both.init.dist == "uniform"


def test_param_initialisers_take_constant_expressions():
    literal, eye, glorot = parse_text("param a: f64[2] = [1, 2]\nparam W: f64[H, H] = eye(H)\nparam G: f64[3, 4] ~ glorot()")
    assert shape(literal.init.value) == ["list", 1, 2]
    assert shape(eye.init.value) == ("call", "eye", "H")
    assert glorot.init.args == ()


def test_fn_expression_form_with_annotations():
    (fn,) = parse_text("fn f(a, b: f64[N]) -> f64 = a + b")
    assert [p.name for p in fn.params] == ["a", "b"]
    assert fn.params[0].type is None and fn.params[1].type.elem == "f64"
    assert fn.ret.elem == "f64"
    assert isinstance(fn.body[0], ast.Return) and shape(fn.body[0].value) == ("+", "a", "b")


def test_fn_block_form():
    (fn,) = parse_text("fn g(a) {\n  let t = a * 2\n  return t\n}")
    assert [type(s) for s in fn.body] == [ast.Let, ast.Return]


def test_fn_without_parameters():
    (fn,) = parse_text("fn k() = 3")
    assert fn.params == ()


def test_import():
    (stmt,) = parse_text('import "lib.spad"')
    assert isinstance(stmt, ast.Import) and stmt.path == "lib.spad"


# ---- statements --------------------------------------------------------------------

def test_let_assign_output_loss():
    let, assign, output, loss = parse_text("let x = 1\nx = 2\noutput y = x\nloss y")
    assert isinstance(let, ast.Let) and isinstance(assign, ast.Assign)
    assert isinstance(output, ast.Output) and output.name == "y"
    assert isinstance(loss, ast.Loss) and shape(loss.value) == "y"


def test_for_loop_with_nested_block():
    (loop,) = parse_text("for t in 0..T {\n  h = relu(h)\n  for s in 1..3 { h = h * 2 }\n}")
    assert loop.var == "t" and shape(loop.range.hi) == "T"
    assert isinstance(loop.body[0], ast.Assign) and isinstance(loop.body[1], ast.For)


def test_range_binds_loosest():
    (loop,) = parse_text("for i in 0..N-1 { }")
    assert shape(loop.range.hi) == ("-", "N", 1)


# ---- expressions and precedence -------------------------------------------------------

@pytest.mark.parametrize("text,tree", [
    ("1 + 2 * 3", ("+", 1, ("*", 2, 3))),
    ("a - b - c", ("-", ("-", "a", "b"), "c")),
    ("a / b // c % d @ e", ("@", ("%", ("//", ("/", "a", "b"), "c"), "d"), "e")),
    ("-x^2", ("-", ("^", "x", 2))),
    ("2^-1", ("^", 2, ("-", 1))),
    ("a^b^c", ("^", "a", ("^", "b", "c"))),
    ("+a", ("+", "a")),
    ("-a * b", ("*", ("-", "a"), "b")),
    ("a < b + 1", ("<", "a", ("+", "b", 1))),
    ("not a and b or c", ("or", ("and", ("not", "a"), "b"), "c")),
    ("a == b and c != d", ("and", ("==", "a", "b"), ("!=", "c", "d"))),
    ("a <= b or a >= b", ("or", ("<=", "a", "b"), (">=", "a", "b"))),
    ("a > b", (">", "a", "b")),
    ("if a < b then x else y + 1", ("if", ("<", "a", "b"), "x", ("+", "y", 1))),
    ("if c then if d then 1 else 2 else 3", ("if", "c", ("if", "d", 1, 2), 3)),
    ("true and false", ("and", True, False)),
    ("(a + b) * c", ("*", ("+", "a", "b"), "c")),
])
def test_precedence(text, tree):
    assert shape(expr(text)) == tree


@pytest.mark.parametrize("text,tree", [
    ("v[i]", ("index", "v", "i")),
    ("A[i, j]", ("index", "A", "i", "j")),
    ("A[i]", ("index", "A", "i")),
    ("A[:, j]", ("index", "A", ("slice", None, None), "j")),
    ("v[a:b]", ("index", "v", ("slice", "a", "b"))),
    ("v[:2]", ("index", "v", ("slice", None, 2))),
    ("v[2:]", ("index", "v", ("slice", 2, None))),
    ("x[i+1]^2", ("^", ("index", "x", ("+", "i", 1)), 2)),
    ("seq[t][0]", ("index", ("index", "seq", "t"), 0)),
])
def test_indexing_and_slices(text, tree):
    assert shape(expr(text)) == tree


@pytest.mark.parametrize("text,tree", [
    ("[1, 2, 3]", ["list", 1, 2, 3]),
    ("[[1, 2], [3, 4]]", ["list", ["list", 1, 2], ["list", 3, 4]]),
    ("[f(a), g(b)]", ["list", ("call", "f", "a"), ("call", "g", "b")]),
    ("[f(i) for i in 0..N]", ["comp", ("call", "f", "i"), "i", 0, "N"]),
    ("[[A[i, j] * 2 for j in 0..N] for i in 0..M]",
     ["comp", ["comp", ("*", ("index", "A", "i", "j"), 2), "j", 0, "N"], "i", 0, "M"]),
])
def test_tensor_literals_and_comprehensions(text, tree):
    assert shape(expr(text)) == tree


@pytest.mark.parametrize("name", ["sum", "prod", "mean", "max", "min"])
def test_reductions_over_generators(name):
    assert shape(expr(f"{name}(x[i] for i in a..b)")) == ("gen", name, ("index", "x", "i"), "i", "a", "b")


def test_calls_with_keyword_arguments():
    assert shape(expr("sum(A, axis=1)")) == ("call", "sum", "A", ("axis", 1))
    assert shape(expr("max(a, b)")) == ("call", "max", "a", "b")
    assert shape(expr("zeros()")) == ("call", "zeros")


BUILTIN_CALLS = ["exp log log1p expm1 sqrt abs sin cos tan tanh sigmoid relu softplus sign floor",
                 "sum mean prod max min norm logsumexp dot outer transpose softmax log_softmax",
                 "cross_entropy mse onehot dropout zeros ones fill eye stop_gradient float int where"]


@pytest.mark.parametrize("name", " ".join(BUILTIN_CALLS).split())
def test_every_builtin_name_parses_as_a_call(name):
    assert shape(expr(f"{name}(a, b)")) == ("call", name, "a", "b")


def test_builtin_constants_are_names():
    assert shape(expr("2 * pi + e")) == ("+", ("*", 2, "pi"), "e")


def test_positions_are_recorded():
    (stmt,) = parse_text("\n  let v = a +  b")
    assert (stmt.loc.line, stmt.loc.col) == (2, 3)
    assert (stmt.name_loc.line, stmt.name_loc.col) == (2, 7)
    assert (stmt.value.loc.line, stmt.value.loc.col) == (2, 13)  # the operator
