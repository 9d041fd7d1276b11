"""Shared helpers: check or run a program given as text, and catch the error it reports."""

import os

import pytest

import spadc
from spadc.errors import Source
from spadc.ir.interpret import RunOptions, evaluate
from spadc.syntax.parser import parse

@pytest.fixture(autouse=True)
def _private_compile_cache(tmp_path_factory, monkeypatch):
    """Each test has a disk cache of its own (spadc/cache.py), empty at its start: tests that
    patch the code generator get the code they patched, and nothing is written to ~/.cache."""
    monkeypatch.setenv("SPADC_CACHE_DIR", str(tmp_path_factory.mktemp("spadc-cache")))


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def parse_text(text: str):
    return parse(Source("t.spad", text)).statements


def check(text: str, name: str = "t.spad"):
    return spadc.frontend.lower(spadc.check_text(text, name), verify_each=True)


def run(text: str, params=None, options=RunOptions(), **inputs):
    program = check(text)
    values = spadc.initial_params(program)
    values.update(params or {})
    return evaluate(program, values, inputs, options)


def error(text: str) -> spadc.SpadcError:
    with pytest.raises(spadc.SpadcError) as info:
        check(text)
    return info.value


def example(name: str) -> str:
    return os.path.join(EXAMPLES, name)
