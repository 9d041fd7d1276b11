"""IR invariants: loops stay loops, the verifier catches broken IR, passes keep what can fail."""

import glob
import os

import numpy as np
import pytest

import spadc
from spadc import passes
from spadc.errors import Loc, Source
from spadc.ir import primitives
from spadc.ir.core import Block, Op, Value, count_ops
from spadc.ir.interpret import evaluate
from spadc.ir.printer import format_program
from spadc.ir.types import F64, I64
from spadc.ir.verify import IRVerifyError, verify

from conftest import EXAMPLES, check

LOOP_MODEL = """
const T = {trips}
input x: f64[4]
param W: f64[4, 4] = eye(4)
let h = x
for t in 0..T {{
  h = tanh(W @ h + sum(h[i] * i for i in 0..4))
}}
loss sum(h)
"""


def test_loop_ir_size_does_not_depend_on_trip_count():
    small = check(LOOP_MODEL.format(trips=10))
    large = check(LOOP_MODEL.format(trips=100000))
    assert count_ops(small.body) == count_ops(large.body)
    assert len(format_program(small).splitlines()) == len(format_program(large).splitlines())


def test_every_example_verifies_after_every_pass():
    for path in glob.glob(os.path.join(EXAMPLES, "*.spad")):
        spadc.frontend.lower(spadc.check_file(path), verify_each=True)


def test_dump_after_each_pass_name():
    program = spadc.check_file(os.path.join(EXAMPLES, "mlp.spad"))
    for name in passes.PASS_NAMES:
        verify(spadc.frontend.lower(program, dump_after=name))


def test_dce_removes_unused_pure_ops_but_keeps_ops_that_can_fail():
    program = check("input k: i64\ninput v: f64[3]\nlet unused = exp(v)\nlet checked = v[k]\nloss sum(v)")
    text = format_program(program)
    assert "exp(" not in text  # dead and cannot fail
    assert "v[k!]" in text  # dead but range-checked: its error is part of the program's meaning
    with pytest.raises(spadc.SpadcError, match="out of range"):
        evaluate(program, {}, {"k": 5, "v": np.zeros(3)})


def test_printer_uses_source_names():
    text = format_program(check("param w: f64[3]\ninput x: f64[3]\nlet h = relu(w * x)\nh = h + 1\nloss sum(h)"))
    assert "h = relu(" in text and "h.1 = add(h," in text and "param w: f64[3]" in text


def test_index_proved_in_range_needs_no_run_time_check():
    text = format_program(check("param x: f64[8]\nloss sum(x[(i + 7) % 8] * x[i] for i in 0..8)"))
    assert "!" not in text
    text = format_program(check("param x: f64[8]\ninput k: i64\nloss x[k]"))
    assert "x[k!]" in text


# ---- the verifier rejects broken IR -------------------------------------------------------------

def _program_with(ops_builder):
    program = check("param w: f64\nloss w * 2.0")
    loc = Loc(Source("t.spad", "x"), 1, 1)
    block, loss = ops_builder(program.params[0].value, loc)
    return program.with_body(Block(list(program.body.params), block), program.outputs, loss, None)


def test_verifier_rejects_use_before_definition():
    def build(w, loc):
        a, b = Value(F64), Value(F64)
        return [Op("mul", (w, b), (a,), {}, loc), Op("exp", (w,), (b,), {}, loc)], a
    with pytest.raises(IRVerifyError, match="used before"):
        verify(_program_with(build))


def test_verifier_rejects_double_definition():
    def build(w, loc):
        a = Value(F64)
        return [Op("exp", (w,), (a,), {}, loc), Op("exp", (w,), (a,), {}, loc)], a
    with pytest.raises(IRVerifyError, match="defined twice"):
        verify(_program_with(build))


def test_verifier_rejects_wrong_result_type():
    def build(w, loc):
        a = Value(I64)
        return [Op("exp", (w,), (a,), {}, loc)], a
    with pytest.raises(IRVerifyError, match="rule gives"):
        verify(_program_with(build))


def test_verifier_rejects_escaping_region_value():
    def build(w, loc):
        index, inner, out = Value(I64), Value(F64), Value(F64)
        body = Block([index], [Op("exp", (w,), (inner,), {}, loc)], [inner])
        tab = Value(F64.with_shape((2,)))
        return [Op("tabulate", (), (tab,), {"lo": 0, "hi": 2, "var": "i"}, loc, (), (body,)),
                Op("exp", (inner,), (out,), {}, loc)], out
    with pytest.raises(IRVerifyError, match="outside its block"):
        verify(_program_with(build))


def test_every_primitive_has_a_reference_implementation_and_shape_rule():
    for name, primitive in primitives.PRIMITIVES.items():
        assert callable(primitive.infer) and callable(primitive.evaluate), name
        assert primitive.doc, name
