"""Text to AST: the lark LALR parser, the newline post-lexer and syntax-error reporting.

Invariants:
- `parse(source)` returns an `ast.Module` or raises `SpadcError` placed at the offending token
  (at the end of the input: just after the last token), saying what was expected.
- The lark Transformer only builds nodes; it never checks meaning.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import Loc, Source, SpadcError, strip_comment as _strip_comment
from . import ast

MAX_NESTING = 200  # levels of the parse tree; deeper programs are refused before any recursion
I64_MAX = (1 << 63) - 1

KEYWORDS = frozenset(
    "const input param state fn let output loss return for while in if then else and or not import true false"
    .split()
)


def _grammar_text() -> str:
    try:
        return resources.files("spadc.grammar").joinpath("spad.lark").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        # Running from a source checkout that is not installed: the grammar sits at the top level.
        return (Path(__file__).resolve().parents[2] / "grammar" / "spad.lark").read_text(encoding="utf-8")


class _KeywordAsName(Exception):
    def __init__(self, token: Token):
        self.token = token


class _DropBracketedNewlines:
    """Post-lexer: inside ( ) and [ ] newlines are free, so they never reach the parser there.

    It also rejects keywords where only a name fits: the contextual lexer would otherwise read
    `let for = 1` as a name.
    """

    always_accept = ("_NL",)
    _OPEN = {"LPAR", "LSQB"}
    _CLOSE = {"RPAR", "RSQB"}

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in self._OPEN:
                depth += 1
            elif token.type in self._CLOSE:
                depth = max(depth - 1, 0)
            elif token.type == "_NL" and depth > 0:
                continue
            elif token.type == "NAME" and token.value in KEYWORDS:
                raise _KeywordAsName(token)
            yield token


@lru_cache(maxsize=1)
def _parser() -> Lark:
    """The parser; its tables (0.8 s to build for language 2.0) are kept in the compile cache's private directory
    (lark's own cache: keyed by the grammar, the options and lark's version; a torn or stale file
    is rebuilt), so a process after the first loads them in a few milliseconds."""
    from .. import cache
    folder = cache.usable_directory(create=True)
    return Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_DropBracketedNewlines(),
        propagate_positions=True,
        maybe_placeholders=True,
        cache=os.path.join(folder, f"parser-{cache.compiler_digest()[:16]}.lark") if folder else False,
    )


def parse(source: Source) -> ast.Module:
    try:
        tree = _parser().parse(source.text + "\n")
    except UnexpectedInput as error:
        raise _syntax_error(source, error) from None
    except _KeywordAsName as error:
        token = error.token
        raise SpadcError(f"syntax error: '{token.value}' is a keyword and cannot be used as a name",
                         Loc(source, token.line, token.column)) from None
    _check_nesting(source, tree)
    try:
        statements = _Builder(source).transform(tree)
    except VisitError as error:  # a SpadcError raised while building (for example a bad number)
        if isinstance(error.orig_exc, SpadcError):
            raise error.orig_exc from None
        raise
    return ast.Module(tuple(statements), source.name)


def _check_nesting(source: Source, tree: lark.Tree):
    """Refuse a parse tree deeper than MAX_NESTING, before anything walks it recursively (the
    transformer, the checker and the adjoint recurse once or more per level)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise SpadcError(f"the program is nested too deeply here (more than {MAX_NESTING} levels of "
                             f"expressions and blocks): split it with `let` or a `fn`",
                             Loc(source, node.meta.line, node.meta.column))
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, lark.Tree))


# ---- syntax errors -------------------------------------------------------------

_EXPRESSION_STARTERS = {"NUMBER", "NAME", "LPAR", "LSQB", "IF", "NOT", "TRUE", "FALSE", "ADD_OP"}
_TOKEN_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "STRING": 'a string ("...")', "_NL": "end of line",
    "$END": "end of input", "COMPARE": "a comparison", "ADD_OP": "'+' or '-'",
    "MUL_OP": "an operator",
}


def _describe_terminal(name: str) -> str:
    if name in _TOKEN_WORDS:
        return _TOKEN_WORDS[name]
    for terminal in _parser().terminals:
        if terminal.name == name and isinstance(terminal.pattern, lark.lexer.PatternStr):
            return f"'{terminal.pattern.value}'"
    return name.lower()


_OPERATORS = {"ADD_OP", "MUL_OP", "COMPARE", "AND", "OR", "CIRCUMFLEX", "LSQB"}


def _expected_words(expected: set[str]) -> str:
    expected = set(expected)
    words = []
    if len(expected & _EXPRESSION_STARTERS) >= 4:
        words.append("an expression")
        expected -= _EXPRESSION_STARTERS
    if len(expected & _OPERATORS) >= 3:
        words.append("an operator")
        expected -= _OPERATORS
    words += sorted(_describe_terminal(name) for name in expected)
    if len(words) > 8:
        words = words[:8] + ["..."]
    return " or ".join(words) if len(words) <= 2 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of input"
    if token.type == "_NL":
        return "end of line"
    if token.value in KEYWORDS:
        return f"keyword '{token.value}'"
    return f"'{token.value}'"


# A statement that starts with one of these is Python's: what the language offers instead.
_PYTHON_STATEMENTS = {
    "def ": "functions are declared with `fn`, as in `fn f(x) = x * x`",
    **dict.fromkeys(("print(", "print "), "there is no `print`: declare the value an `output` (`spadc run` shows "
                                          "it), as in `output y = x`"),
    "while ": "a `while` loop needs a bound, as in `while err > 1e-9 max 50 { ... }`: it stops with an error if "
              "its condition still holds after that many iterations",
    "class ": "there are no classes: a model is a file of `param`, `input`, `let`, `output` and `loss` "
              "statements and `fn`s, and may `import \"other.spad\"`",
    "lambda ": "there are no lambdas: declare a `fn`, as in `fn f(z) = z * z`",
    "from ": "`import` takes a .spad file, as in `import \"lib/layers.spad\"`; NumPy's functions are builtins, as "
             "in `exp(x)`",
}


def _hint(source: Source, loc: Loc) -> str:
    """What a programmer coming from Python or NumPy probably meant."""
    line = source.line_text(loc.line)
    before, here = line[:loc.col - 1], line[loc.col - 1:]
    statement = line.lstrip()
    for start, hint in _PYTHON_STATEMENTS.items():
        if statement.startswith(start):
            return "; " + hint
    if statement.startswith("import ") and not statement[len("import "):].lstrip().startswith('"'):
        return "; " + _PYTHON_STATEMENTS["from "]
    if here[:2] in ("+=", "-=", "*=", "/="):
        return f"; there is no `{here[:2]}`: write `x = x {here[0]} e`"
    if "range(" in line:
        return "; ranges are written `lo..hi`, as in `for i in 0..3`"
    if here.startswith("if ") and before.strip() and not before.rstrip().endswith(("=", "(", ",", "then", "else")):
        return "; a conditional expression is written `if c then a else b`"
    if "lambda " in before + here[:7]:
        return "; " + _PYTHON_STATEMENTS["lambda "]
    if here.startswith("*") and before.endswith("*") or here.startswith("**"):
        return "; powers are written `^`, as in `x ^ 2`"
    if here.startswith(".T"):
        return "; a transpose is written `transpose(W)`"
    if here.startswith(".") and not here.startswith(".."):
        return "; values have no attributes or methods: builtins are functions, as in `sum(x)`"
    return ""


def _syntax_error(source: Source, error: UnexpectedInput) -> SpadcError:
    if isinstance(error, UnexpectedCharacters):
        char = source.text[error.pos_in_stream] if error.pos_in_stream < len(source.text) else "?"
        loc = Loc(source, error.line, error.column)
        return SpadcError(f"syntax error: unexpected character {char!r}{_hint(source, loc)}", loc)
    if isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "$END" or token.line is None or (token.type == "_NL" and token.line >= source.end_loc().line):
            loc, token = source.end_loc(), Token("$END", "")
        elif token.type == "_NL":  # just after the line's last token, not after its comment
            loc = Loc(source, token.line, len(_strip_comment(source.line_text(token.line)).rstrip()) + 1)
        else:
            loc = Loc(source, token.line, token.column)
        # LALR merges lookaheads; ask the parser which tokens it would really take here.
        expected = set(error.interactive_parser.accepts()) if error.interactive_parser else set(error.expected)
        if token.type == "_NL" and "LBRACE" in expected:
            return SpadcError("syntax error: '{' must open the block on the same line", loc)
        if token.type == "COMPARE" and "COMPARE" not in expected:
            return SpadcError("syntax error: comparisons do not chain; write `a < b and b < c`", loc)
        return SpadcError(f"syntax error: unexpected {_describe_token(token)}; expected {_expected_words(expected)}"
                          f"{_hint(source, loc)}", loc)
    return SpadcError(f"syntax error: {error}", source.end_loc())


# ---- parse tree to AST ---------------------------------------------------------

def _number_value(text: str, loc: Loc) -> int | float:
    """An integer literal fits in i64; a float literal is finite in f64 (its rounding is fine)."""
    if any(c in text for c in ".eE"):
        value = float(text)
        if value == float("inf"):
            raise SpadcError(f"the number {_abbreviated(text)} is too large for f64 (at most about 1.8e308)", loc)
        return value
    digits = text.lstrip("0") or "0"
    if len(digits) > 19 or int(digits) > I64_MAX:  # the length test first: int() refuses over 4300 digits
        raise SpadcError(f"the integer {_abbreviated(text)} does not fit in i64 (at most {I64_MAX}); "
                         f"write a float (with a `.` or an exponent) if you mean one", loc)
    return int(text)


def _abbreviated(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:10]}...{text[-6:]} ({len(text)} digits)"


def _split_arguments(args) -> tuple[tuple, tuple]:
    """Positional arguments and keywords (`axis=1`) of a call, each in source order."""
    args = [a for a in args if a is not None]
    return (tuple(a for a in args if not isinstance(a, ast.Keyword)),
            tuple(a for a in args if isinstance(a, ast.Keyword)))


@v_args(meta=True)
class _Builder(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _loc(self, meta_or_token) -> Loc:
        return Loc(self.source, meta_or_token.line, meta_or_token.column)

    # structure
    def start(self, meta, children):
        return [c for c in children if c is not None]

    def block(self, meta, children):
        return tuple(c for c in children if c is not None)

    # declarations
    def const_decl(self, meta, c):
        return ast.Const(str(c[0]), c[1], self._loc(meta), self._loc(c[0]))

    def input_decl(self, meta, c):
        return ast.Input(str(c[0]), c[1], self._loc(meta), self._loc(c[0]))

    def state_decl(self, meta, c):
        name, type_, init = c
        return ast.State(str(name), type_, init, self._loc(meta), self._loc(name))

    def param_decl(self, meta, c):
        name, type_, bounds, init = c
        return ast.Param(str(name), type_, bounds, init, self._loc(meta), self._loc(name))

    def bounds(self, meta, c):
        return (c[0], c[1])

    def init_value(self, meta, c):
        return ast.InitValue(c[0], self._loc(meta))

    def init_dist(self, meta, c):
        name, *args = c
        return ast.InitDist(str(name), *_split_arguments(args), self._loc(name))

    def fn_decl(self, meta, c):
        name, params, ret, body = c
        if not isinstance(body, tuple):  # `= expr` form
            body = (ast.Return(body, body.loc),)
        return ast.Fn(str(name), tuple(params or ()), ret, body, self._loc(meta), self._loc(name))

    def fn_params(self, meta, c):
        return tuple(p for p in c if p is not None)

    def fn_param(self, meta, c):
        return ast.FnParam(str(c[0]), c[1], self._loc(c[0]))

    def fn_expr_body(self, meta, c):
        return c[0]

    def import_decl(self, meta, c):
        return ast.Import(str(c[0])[1:-1], self._loc(meta))

    def type(self, meta, c):
        name, *dims = c
        return ast.TypeExpr(str(name), tuple(d for d in dims if d is not None), self._loc(name))

    # statements
    def let_stmt(self, meta, c):
        return ast.Let(str(c[0]), c[1], self._loc(meta), self._loc(c[0]))

    def assign_stmt(self, meta, c):
        return ast.Assign(str(c[0]), c[1], self._loc(meta), self._loc(c[0]))

    def let_unpack(self, meta, c):
        *names, value = c
        return ast.Unpack(tuple(map(str, names)), value, self._loc(meta), tuple(map(self._loc, names)), True)

    def assign_unpack(self, meta, c):
        *names, value = c
        return ast.Unpack(tuple(map(str, names)), value, self._loc(meta), tuple(map(self._loc, names)), False)

    def update_stmt(self, meta, c):
        name, *items, operator, value = c
        return ast.Update(str(name), tuple(i for i in items if i is not None), value, str(operator) == "+=",
                          self._loc(meta), self._loc(name))

    def tuple_type(self, meta, c):
        return tuple(c)

    def for_stmt(self, meta, c):
        var, range_, body = c
        return ast.For(str(var), range_, body, self._loc(meta), self._loc(var))

    def while_stmt(self, meta, c):
        cond, limit, body = c
        return ast.While(cond, limit, body, self._loc(meta))

    def output_stmt(self, meta, c):
        return ast.Output(str(c[0]), c[1], self._loc(meta), self._loc(c[0]))

    def loss_stmt(self, meta, c):
        return ast.Loss(c[0], self._loc(meta))

    def return_stmt(self, meta, c):
        value = c[0] if len(c) == 1 else ast.TupleExpr(tuple(c), self._loc(meta))
        return ast.Return(value, self._loc(meta))

    def range(self, meta, c):
        return ast.Range(c[0], c[1], self._loc(meta))

    # expressions
    def number(self, meta, c):
        return ast.Number(_number_value(str(c[0]), self._loc(c[0])), self._loc(c[0]))

    def true(self, meta, c):
        return ast.Bool(True, self._loc(meta))

    def false(self, meta, c):
        return ast.Bool(False, self._loc(meta))

    def var(self, meta, c):
        return ast.Var(str(c[0]), self._loc(c[0]))

    def if_expr(self, meta, c):
        return ast.IfExpr(c[0], c[1], c[2], self._loc(meta))

    def or_op(self, meta, c):
        return ast.Binary("or", c[0], c[1], self._loc(meta))

    def and_op(self, meta, c):
        return ast.Binary("and", c[0], c[1], self._loc(meta))

    def not_op(self, meta, c):
        return ast.Unary("not", c[0], self._loc(meta))

    def compare(self, meta, c):
        return ast.Binary(str(c[1]), c[0], c[2], self._loc(c[1]))

    def chain(self, meta, c):
        """`a + b - c`: operands and operators alternate; folded to the left, without recursion."""
        value = c[0]
        for k in range(1, len(c), 2):
            value = ast.Binary(str(c[k]), value, c[k + 1], self._loc(c[k]))
        return value

    def unary(self, meta, c):
        return ast.Unary(str(c[0]), c[1], self._loc(c[0]))

    def power(self, meta, c):
        return ast.Binary("^", c[0], c[1], self._loc(meta))

    def index(self, meta, c):
        base, *items = c
        return ast.Index(base, tuple(i for i in items if i is not None), self._loc(meta))

    def slice(self, meta, c):
        return ast.Slice(c[0], c[1], self._loc(meta))

    def call(self, meta, c):
        name, *args = c
        return ast.Call(str(name), *_split_arguments(args), self._loc(name))

    def kwarg(self, meta, c):
        return ast.Keyword(str(c[0]), c[1], self._loc(c[0]))

    def comp_for(self, meta, c):
        return (str(c[0]), self._loc(c[0]), c[1])

    def gen_call(self, meta, c):
        name, body, (var, var_loc, range_) = c
        return ast.GenCall(str(name), body, var, var_loc, range_, self._loc(name))

    def list_lit(self, meta, c):
        return ast.ListLit(tuple(e for e in c if e is not None), self._loc(meta))

    def comprehension(self, meta, c):
        body, (var, var_loc, range_) = c
        return ast.Comprehension(body, var, var_loc, range_, self._loc(meta))
