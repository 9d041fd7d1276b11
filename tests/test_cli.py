"""The command line: exit codes, messages on stderr, never a traceback; installed entry points."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import example


def spadc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "spadc", *args], capture_output=True, text=True, cwd=cwd)


def test_check_ok():
    result = spadc("check", example("mlp.spad"))
    assert result.returncode == 0 and result.stdout.strip() == "ok" and result.stderr == ""


def test_check_reports_an_error_with_place_and_exit_1(tmp_path):
    bad = tmp_path / "bad.spad"
    bad.write_text("param w: f64[3]\nlet y = w @ zeros(4)\nloss sum(y)\n")
    result = spadc("check", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    assert f"{bad}:2:11: error: cannot multiply f64[3] `@` f64[4]" in result.stderr
    assert "    let y = w @ zeros(4)\n" in result.stderr and "              ^" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_user_error():
    result = spadc("check", "no/such/file.spad")
    assert result.returncode == 1 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_bad_usage_exits_2():
    assert spadc("frobnicate").returncode == 2
    assert spadc("check").returncode == 2
    assert spadc("ir", example("mlp.spad"), "--dump-after", "nonsense").returncode == 2


def test_every_command_has_help():
    for command in ([], ["check"], ["ir"]):
        result = spadc(*command, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout


def test_ir_prints_the_program():
    result = spadc("ir", example("irnn.spad"))
    assert result.returncode == 0
    assert "h.1 = loop t in 0..28 carry (h.2 = h) {" in result.stdout
    assert "logits = matmul(Wo, h.1) : f64[10]" in result.stdout


def test_ir_dump_after_check_shows_unoptimised_ir(tmp_path):
    src = tmp_path / "m.spad"
    src.write_text("param w: f64\nlet unused = exp(w)\nloss w\n")
    assert "exp(w)" in spadc("ir", str(src), "--dump-after", "check").stdout
    assert "exp(w)" not in spadc("ir", str(src)).stdout


def test_installed_console_script_and_grammar_resource(tmp_path):
    script = shutil.which("spadc", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if script is None:
        pytest.skip("spadc is not installed in this environment (running from a source tree)")
    result = subprocess.run([script, "check", example("rosenbrock.spad")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok"
    # The grammar ships as package data: the installed package (imported away from the source
    # tree) finds it as a resource.
    probe = "import importlib.resources as r; print(r.files('spadc.grammar').joinpath('spad.lark').is_file())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.strip() == "True", result.stderr
