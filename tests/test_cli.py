"""The command line: exit codes, messages on stderr, never a traceback; installed entry points."""

import os
import re
import shutil
import subprocess
import sys

import pytest

import spadc as spadc_package

from conftest import example, run_cli


def spadc(*args, cwd=None):
    """The command, run in this process (conftest.run_cli)."""
    return run_cli(*args, cwd=cwd)


def spadc_process(*args, cwd=None):
    """`python -m spadc ARGS` in a process of its own: the entry point as a user meets it."""
    return subprocess.run([sys.executable, "-m", "spadc", *args], capture_output=True, text=True, cwd=cwd)


def test_check_ok():
    result = spadc_process("check", example("mlp.spad"))
    assert result.returncode == 0 and result.stdout.strip() == "ok" and result.stderr == ""


def test_check_reports_an_error_with_place_and_exit_1(tmp_path):
    bad = tmp_path / "bad.spad"
    bad.write_text("param w: f64[3]\nlet y = w @ zeros(4)\nloss sum(y)\n")
    result = spadc_process("check", str(bad))
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
    for command in ([], ["check"], ["ir"], ["llvm"], ["run"], ["grad"]):
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


# ---- llvm, run, grad ------------------------------------------------------------------------------

def test_llvm_prints_the_forward_or_gradient_kernel():
    forward = spadc("llvm", example("rosenbrock.spad"))
    assert forward.returncode == 0 and 'define i64 @"forward"(double* noalias %"params"' in forward.stdout
    assert '@"grad"' not in forward.stdout
    gradient = spadc("llvm", example("rosenbrock.spad"), "--grad")
    assert gradient.returncode == 0 and 'define i64 @"grad"(' in gradient.stdout
    assert "x.grad" in gradient.stdout  # values are named after source variables
    optimised = spadc("llvm", example("rosenbrock.spad"), "--optimised", "--grad")  # (the gradient kernel's module)
    assert optimised.returncode == 0 and re.search(r"<\d+ x double>", optimised.stdout)  # vectorised (any width)


def test_run_reads_inputs_and_params_and_writes_outputs(tmp_path):
    import numpy as np
    inputs, params, out = tmp_path / "in.npz", tmp_path / "p.npz", tmp_path / "out.npz"
    np.savez(inputs, x=np.ones((3, 64)), label=np.array([1, 2, 3]))
    zeros = {"W1": np.zeros((64, 64)), "b1": np.zeros(64), "W2": np.zeros((10, 64)), "b2": np.zeros(10)}
    np.savez(params, **zeros)
    result = spadc("run", example("mlp.spad"), "--inputs", str(inputs), "--params", str(params), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("loss = [2.302585 2.302585 2.302585]")
    with np.load(out) as data:
        assert np.allclose(data["loss"], np.log(10)) and data["logits"].shape == (3, 10)


def test_grad_prints_norms_and_writes_gradients(tmp_path):
    import numpy as np
    out = tmp_path / "g.npz"
    result = spadc("grad", example("rosenbrock.spad"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "loss = 6316.2" in result.stdout and "d loss / d x  shape [10]" in result.stdout
    x = np.full(10, -1.2)
    expected = np.zeros(10)
    expected[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    expected[1:] += 200 * (x[1:] - x[:-1] ** 2)
    with np.load(out) as data:
        assert np.allclose(data["x"], expected, rtol=1e-12)


def test_run_errors_are_user_errors(tmp_path):
    result = spadc("run", example("mlp.spad"))
    assert result.returncode == 1 and "missing input `x`" in result.stderr and "Traceback" not in result.stderr
    result = spadc("run", example("mlp.spad"), "--inputs", str(tmp_path / "none.npz"))
    assert result.returncode == 1 and "cannot read inputs" in result.stderr
    assert spadc("grad", example("mlp.spad"), "--estimator", "bogus").returncode == 2


def test_ir_grad_shows_the_adjoint():
    result = spadc("ir", example("irnn.spad"), "--grad")
    assert result.returncode == 0
    assert re.search(r"loop t(\.\d+)? in 0\.\.28 reversed carry \(h\.adj(\.\d+)? = ", result.stdout)
    assert "h.tape[t" in result.stdout and re.search(r"outer_add\(Wh\.adj(\.\d+)?, ", result.stdout)


def test_mem_reports_sites_and_totals():
    result = spadc("mem", example("irnn.spad"), "--keep", "0.1")
    assert result.returncode == 0, result.stderr
    assert "irnn.spad:17  residual of `matmul`, operand 0  64" in result.stdout
    # Worked by hand (T = 28, H = 64, k = ceil(0.1 * 64) = 7). Sites: the input row seq[t] is read
    # again (0 B); h per iteration 28 * 64 * 8 = 14,336 B exact, 28 * 7 * 8 = 1,568 B sampled; the
    # final h 512 B exact, 56 B sampled. The rest of the tape: relu's masks as bits, 28 * 8 = 224 B,
    # and cross-entropy's exp(logits - max) 80 B and its sum 8 B.
    assert "irnn.spad:17  residual of `matmul`, operand 0  28        28       0 B      0 B" in result.stdout
    assert "sampled sites: 14,848 B exact, 1,624 B under the estimator (10.9%)" in result.stdout
    assert "whole tape:    15,160 B exact, 1,936 B under the estimator" in result.stdout
    assert re.search(r"peak workspace: [\d,]+ B exact, [\d,]+ B under the estimator", result.stdout)
    assert spadc("mem", example("irnn.spad"), "--estimator", "exact").returncode == 1
    # Lanes: the workspace holds every lane's values; one lane is the least, and the tape is per sample.
    lanes = re.search(r"peak workspace: ([\d,]+) B exact.*\((\d+) samples side by side", result.stdout)
    one = spadc("mem", example("irnn.spad"), "--keep", "0.1", "--lanes", "1")
    single = re.search(r"peak workspace: ([\d,]+) B exact.*one sample at a time", one.stdout)
    assert lanes and single and int(lanes.group(2)) > 1, (result.stdout, one.stdout)
    assert int(single.group(1).replace(",", "")) * 2 <= int(lanes.group(1).replace(",", ""))
    assert "whole tape:    15,160 B exact, 1,936 B under the estimator" in one.stdout
    refused = spadc("mem", example("irnn.spad"), "--lanes", "0")
    assert refused.returncode == 1 and "lanes must be an integer from 1" in refused.stderr
    # f32: floats take 4 bytes (14,336 / 2 + 256 of final h), masks the same bits, cross-entropy's 40 + 4.
    f32 = spadc("mem", example("irnn.spad"), "--keep", "0.1", "--dtype", "f32")
    assert "sampled sites: 7,424 B exact, 812 B under the estimator (10.9%)" in f32.stdout, f32.stdout
    spad = spadc("mem", example("irnn.spad"), "--estimator", "spad", "--keep", "0.1")
    assert ("score=paths keeps 1,936 B (RAD's tape, 8 candidates in turn); score=gradient runs the exact "
            "adjoint and keeps 15,160 B") in spad.stdout


def test_grad_with_an_estimator_and_draws():
    result = spadc("grad", example("mlp.spad"), "--estimator", "rad", "--keep", "0.3", "--draws", "50",
                   "--inputs", _mlp_inputs())
    assert result.returncode == 0, result.stderr
    assert "50 draws of rad (seeds derived from 0)" in result.stdout and "max z" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()[2:6]]
    assert [line[0] for line in lines] == ["W1", "b1", "W2", "b2"]
    assert "pooled z along the exact gradient" in result.stdout and "a 5% bias would add" in result.stdout
    result = spadc("grad", example("rosenbrock.spad"), "--estimator", "rad", "--sites", "edges", "--keep", "0.3")
    assert result.returncode == 0 and "warning: param `x` has a path to the loss through 5 random factors" in result.stderr
    # Under the default `weights` policy Rosenbrock has no site: said, not a power of inf (issue 29).
    result = spadc("grad", example("rosenbrock.spad"), "--estimator", "rad", "--draws", "20")
    assert result.returncode == 0 and "no site to gate under the `weights` site policy" in result.stderr
    assert "there is no bias to test" in result.stdout and "no evidence of bias" not in result.stdout


def _mlp_inputs():
    import tempfile
    import numpy as np
    path = os.path.join(tempfile.mkdtemp(), "in.npz")
    np.savez(path, x=np.linspace(-1, 1, 64), label=np.array(3))
    return path


def test_ir_with_an_estimator_shows_the_gates():
    result = spadc("ir", example("mlp.spad"), "--grad", "--estimator", "rad", "--keep", "0.1")
    assert result.returncode == 0, result.stderr
    # The sampled weight gradients consume the packs column by column: no dense stand-in is unpacked.
    assert "gate_pack(" in result.stdout and "gate_outer_add(" in result.stdout and "k=7" in result.stdout
    assert "gate_pack(" not in spadc("ir", example("mlp.spad"), "--grad").stdout


@pytest.mark.parametrize("command", ["check", "ir", "llvm", "run", "grad", "train", "build", "mem"])
def test_every_option_with_a_default_shows_it_in_help(command):
    import argparse
    from spadc.cli import _parser
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = spadc(command, "--help").stdout
    for action in sub._actions:
        if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS \
                and action.help != argparse.SUPPRESS:
            assert f"(default: {action.default})" in " ".join(text.split()), (command, action.dest)


def test_version():
    result = spadc("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"spadc {spadc_package.__version__} (llvmlite ")
    assert ", LLVM " in result.stdout


@pytest.mark.parametrize("args, hint", [
    (("grad", "--policy", "products"), "--policy is no longer an option: the site policy is --sites"),
    (("build", "--policy", "edges", "-o", "x.o"), "the site policy is --sites"),
    (("train", "--inputs", "d.npz"), "training data comes from --data"),
])
def test_old_spellings_are_refused_with_the_new_name(args, hint):
    result = spadc(args[0], example("rosenbrock.spad"), *args[1:])
    assert result.returncode == 2 and hint in result.stderr


def test_spad_settings_from_the_command_line():
    result = spadc("mem", example("irnn.spad"), "--estimator", "spad", "--keep", "0.2", "--refresh", "5",
                   "--candidates", "3", "--rank", "importance", "--score", "paths", "--sites", "weights")
    assert result.returncode == 0 and "every 5 steps" in result.stdout and "3 candidates in turn" in result.stdout


def test_data_files_name_their_shapes_and_unknown_arrays(tmp_path):
    import numpy as np
    np.savez(tmp_path / "d.npz", x=np.zeros((800, 4)), label=np.zeros(800, dtype=np.int64))
    result = spadc("train", example("mlp.spad"), "--data", str(tmp_path / "d.npz"), "--quiet")
    assert result.returncode == 1 and "array `x` has shape [800, 4]" in result.stderr
    assert "needs [samples, 64]" in result.stderr and "`label` [800]" in result.stderr
    np.savez(tmp_path / "e.npz", x=np.zeros((10, 64)), label=np.zeros(10, dtype=np.int64), extra=np.zeros(3))
    result = spadc("train", example("mlp.spad"), "--data", str(tmp_path / "e.npz"), "--epochs", "1", "--quiet")
    assert result.returncode == 0 and "array `extra` is not an input of the model" in result.stderr


def test_a_model_without_inputs_trains_for_steps(tmp_path):
    result = spadc("train", example("rosenbrock.spad"), "--steps", "200", "--lr", "0.01", "--quiet",
                   "--out", str(tmp_path / "x.npz"))
    assert result.returncode == 0, result.stderr
    assert "trained 200 steps" in result.stdout
    final = float(result.stdout.split("final train loss ")[1].split()[0].rstrip(";"))
    assert final < 6316.2  # from the initial point's loss
    assert spadc("train", example("rosenbrock.spad"), "--quiet").returncode == 1
    result = spadc("train", example("mlp.spad"), "--steps", "3", "--quiet")
    assert result.returncode == 1 and "give the training data with --data" in result.stderr


def test_a_shared_library_for_another_target_needs_its_linker(tmp_path):
    result = spadc("build", example("mlp.spad"), "-o", str(tmp_path / "x.so"), "--target", "aarch64-linux-gnu")
    assert result.returncode == 1 and "build an object instead" in result.stderr and "--linker" in result.stderr
    assert "Traceback" not in result.stderr


# ---- one set of options with the Python API (issue 29) --------------------------------------------

@pytest.mark.parametrize("options, needed", [
    (["--keep", "0.3"], "--estimator rad or spad"), (["--estimator", "rad", "--refresh", "5"], "--estimator spad"),
    (["--sigma", "0.1"], "--estimator es or pes"), (["--damping", "0.1"], "--precondition"),
    (["--interval", "3"], "--precondition"), (["--momentum", "0.9"], "--optimizer sgd"),
    (["--optimizer", "sgd", "--betas", "0.8,0.9"], "--optimizer adam or adamw"),
    (["--gamma", "0.5"], "--schedule step"), (["--schedule", "step", "--eta-min", "0.1"], "--schedule cosine"),
])
def test_an_option_that_would_be_ignored_is_a_usage_error(options, needed):
    result = spadc("train", example("rosenbrock.spad"), "--steps", "2", *options)
    flag = options[-2]
    assert result.returncode == 2 and f"{flag} applies only with {needed}" in result.stderr


def test_grad_refuses_keep_without_a_sampled_estimator():
    result = spadc("grad", example("rosenbrock.spad"), "--keep", "0.5")
    assert result.returncode == 2 and "--keep applies only with --estimator rad or spad" in result.stderr


def test_every_optimizer_setting_reaches_python_with_python_defaults(tmp_path):
    """The command line and `fit` give the same final params, bit for bit: SGD with Nesterov momentum,
    weight decay and a step schedule, in f32; and plain SGD with no --lr, which takes SGD()'s own lr."""
    import numpy as np
    import spadc as api
    runs = [("rosenbrock.spad", ["--optimizer", "sgd", "--lr", "1e-4", "--momentum", "0.9", "--nesterov",
                                  "--weight-decay", "0.01", "--schedule", "step", "--step-size", "10", "--gamma", "0.5",
                                  "--dtype", "f32"],
             dict(optimizer=api.SGD(lr=1e-4, momentum=0.9, nesterov=True, weight_decay=0.01),
                  schedule=api.StepLR(step_size=10, gamma=0.5)), "f32"),
            ("sphere.spad", ["--optimizer", "sgd"], dict(optimizer=api.SGD()), "f64")]
    for k, (name, flags, python, dtype) in enumerate(runs):
        out = tmp_path / f"p{k}.npz"
        result = spadc("train", example(name), "--steps", "30", "--quiet", "--out", str(out), *flags)
        assert result.returncode == 0, result.stderr
        model = api.compile_file(example(name), dtype=dtype)
        model.init_params(0)
        model.fit(None, steps=30, **python)
        with np.load(out) as saved:
            np.testing.assert_array_equal(saved["x"], np.asarray(model.params["x"], dtype=np.float64))
    assert api.SGD().lr == 0.01 and "sgd 0.01" in spadc("train", "--help").stdout


def test_old_spellings_are_aliases(tmp_path):
    data = os.path.join(os.path.dirname(example("x")), "data", "digits_test.npz")
    for flags in (["--batch", "64", "--val-split", "0.25"], ["--batch-size", "64", "--validation-split", "0.25"]):
        result = spadc("train", example("mlp.spad"), "--data", data, "--epochs", "1", "--quiet", *flags)
        assert result.returncode == 0 and "trained 5 steps" in result.stdout, result.stderr  # 270 samples / 64


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_steps_with_data_is_an_error_not_ignored(command, tmp_path):
    """A model with inputs trains for epochs over its data: --steps used to be dropped silently."""
    data = os.path.join(os.path.dirname(example("x")), "data", "digits_test.npz")
    extra = ["--grid", "lr=0.1", "--out", str(tmp_path / "s.csv")] if command == "sweep" else ["--quiet"]
    result = spadc(command, example("mlp.spad"), "--data", data, "--steps", "3", *extra)
    assert result.returncode == 1 and "--steps N is for a model without inputs" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "s.csv")


def test_check_warns_when_the_gradient_cannot_fit_in_the_memory_limit():
    """The program is valid (ok, exit 0), but its exact gradient's tape would not fit (issue 29): it
    will be checkpointed (issue 24), or, below the least any plan needs, refused."""
    result = spadc("check", example("reaction_diffusion_long.spad"), "--max-memory", "1M")
    assert result.returncode == 0 and result.stdout.strip() == "ok"
    assert "reaction_diffusion_long.spad:17:1: warning: the exact gradient's tape needs a workspace of 4.9 MiB" in result.stderr
    assert ("gradients will be checkpointed (loop at line 17 (10,000 steps): 100 snapshots, segments of 100 steps "
            "taped, 1 replay of each step)") in result.stderr
    refused = spadc("check", example("reaction_diffusion_long.spad"), "--max-memory", "4K")
    assert refused.returncode == 0 and refused.stdout.strip() == "ok"
    assert "reaction_diffusion_long.spad:17:1: warning: the program is valid, but the gradient needs" in refused.stderr
    assert "bytes would do" in refused.stderr
    quiet = spadc("check", example("reaction_diffusion_long.spad"))
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_build_plans_its_gradient_to_max_memory_and_checkpoint(tmp_path):
    """`spadc build` takes --checkpoint as `grad` and `train` do: "none" under a budget the tape passes
    is refused with the loop's location; "auto" checkpoints the loop into the budget."""
    header = tmp_path / "long.h"
    build = ("build", example("reaction_diffusion_long.spad"), "-o", str(tmp_path / "long.o"), "--header", str(header),
             "--target", "thumbv7em-none-eabihf", "--dtype", "f32", "--estimators", "exact", "--max-memory", "192K")
    refused = spadc(*build, "--checkpoint", "none")
    assert refused.returncode != 0 and "reaction_diffusion_long.spad:17:1: error: the gradient kernel needs" in refused.stderr
    planned = spadc(*build, "--checkpoint", "auto")
    assert planned.returncode == 0, planned.stderr
    workspace = re.search(r"_WORKSPACE_GRAD_EXACT (\d+)", header.read_text())
    assert int(workspace.group(1)) <= 192 * 1024
