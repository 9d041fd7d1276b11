"""Every ```spad block of docs/language.md is a whole program that compiles and differentiates."""

import os
import re

import numpy as np
import pytest

import spadc
from spadrt.arguments import user_inputs

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "language.md")
BLOCKS = re.findall(r"```spad\n(.*?)```", open(DOC, encoding="utf-8").read(), flags=re.S)


def test_the_reference_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_example_compiles_and_differentiates(index):
    model = spadc.compile_source(BLOCKS[index], name=f"language{index}.spad")
    inputs = {}
    for spec in user_inputs(model.layout):
        shape = tuple(spec["shape"])
        inputs[spec["name"]] = np.full(shape, 2, dtype=np.int64) if spec["dtype"] == "i64" else np.linspace(0.1, 0.9, max(int(np.prod(shape)), 1)).reshape(shape)
    loss, grads = model.grad(**inputs)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


def test_the_keyword_list_is_the_parsers():
    """docs/language.md lists exactly the words the parser reserves (`state` was missing once)."""
    from spadc.syntax.parser import KEYWORDS
    listed = re.search(r"Keywords: `([^`]*)`", open(DOC, encoding="utf-8").read().replace("\n  ", " ")).group(1)
    assert set(listed.split()) == set(KEYWORDS)


def test_the_results_index_names_every_table():
    results = os.path.join(os.path.dirname(DOC), "results")
    index = open(os.path.join(results, "README.md"), encoding="utf-8").read()
    tables = [f for f in os.listdir(results) if f.endswith(".md") and f != "README.md"]
    assert tables and all(f"({table})" in index for table in tables), tables
