"""A Pygments lexer for .spad sources (`pygmentize -l spad FILE.spad`), registered as the entry
point `pygments.lexers: spad`. Pygments is needed only by whoever highlights: spadc does not
import this module.

Invariants:
- Its keywords, builtins and number forms are the compiler's own (the parser's KEYWORDS, the
  checker's BUILTINS, the grammar's NUMBER), so highlighting cannot drift from the language.
"""

from __future__ import annotations

from pygments.lexer import RegexLexer, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text

from .check.builtins import BUILTINS
from .syntax.parser import KEYWORDS

_DECLARATIONS = ("const", "input", "param", "fn", "import", "let", "output", "loss")
_TYPES = ("f64", "i64", "bool", "f32")


class SpadLexer(RegexLexer):
    name = "spad"
    aliases = ["spad"]
    filenames = ["*.spad"]

    tokens = {
        "root": [
            (r"#[^\n]*", Comment.Single),
            (r'"[^"\n]*"', String),
            (words(_DECLARATIONS, suffix=r"\b"), Keyword.Declaration),
            (words(tuple(sorted(KEYWORDS - set(_DECLARATIONS))), suffix=r"\b"), Keyword),
            (words(_TYPES, suffix=r"\b"), Keyword.Type),
            (words(tuple(sorted(BUILTINS)) + ("pi", "e", "normal", "uniform", "glorot"), suffix=r"\b(?=\s*\(|\b)"),
             Name.Builtin),
            (r"\d+\.\d+([eE][+-]?\d+)?|\d+[eE][+-]?\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"[A-Za-z_][A-Za-z0-9_]*", Name),
            (r"\.\.|//|<=|>=|==|!=|->|[-+*/%@^<>=~]", Operator),
            (r"[()\[\]{},:;]", Punctuation),
            (r"\s+", Text),
        ],
    }
