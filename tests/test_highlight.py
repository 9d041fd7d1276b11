"""The Pygments lexer and the TextMate grammar know the language's keywords and builtins, and
highlight every example without an error token."""

import glob
import json
import os
import re

import pytest

pygments = pytest.importorskip("pygments")  # a test dependency of pytest itself

from pygments.token import Error, Keyword, Name  # noqa: E402

from spadc.check.builtins import BUILTINS  # noqa: E402
from spadc.highlight import SpadLexer  # noqa: E402
from spadc.syntax.parser import KEYWORDS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.spad"), recursive=True))


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_examples_lex_without_errors(path):
    tokens = list(SpadLexer().get_tokens(open(path, encoding="utf-8").read()))
    assert not [value for kind, value in tokens if kind in Error]
    assert any(kind in Keyword for kind, _ in tokens)


def test_the_lexer_is_registered_for_pygmentize():
    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
    assert isinstance(get_lexer_by_name("spad"), SpadLexer)
    assert isinstance(get_lexer_for_filename("model.spad"), SpadLexer)


def test_keywords_and_builtins_are_the_compilers():
    text = " ".join(sorted(KEYWORDS)) + " " + " ".join(f"{name}(x)" for name in sorted(BUILTINS))
    kinds = {value: kind for kind, value in SpadLexer().get_tokens(text)}
    assert all(kinds[word] in Keyword for word in KEYWORDS)
    assert all(kinds[name] in Name.Builtin for name in BUILTINS)


def test_the_textmate_grammar_names_every_keyword_and_builtin():
    grammar = json.load(open(os.path.join(ROOT, "editors", "spad.tmLanguage.json")))
    patterns = [re.compile(p["match"]) for p in grammar["patterns"]]
    for word in sorted(KEYWORDS):
        assert any(p.fullmatch(word) for p in patterns), word
    for name in sorted(BUILTINS):
        assert any(p.match(f"{name}(") and p.match(f"{name}(").group(0) == name for p in patterns), name
