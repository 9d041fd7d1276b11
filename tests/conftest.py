"""Shared helpers: check or run a program given as text, and catch the error it reports; run a
command line in this process."""

import contextlib
import io
import os
import subprocess
import warnings

import pytest

import spadc
from spadc.errors import Source
from spadc.ir.interpret import RunOptions, evaluate
from spadc.syntax.parser import parse


def pytest_configure(config):
    config.addinivalue_line("markers", "private_cache: the test gets an empty compile cache of its own (it patches "
                            "the code generator, or tests the cache itself)")


@pytest.fixture(scope="session")
def _shared_cache_directory(tmp_path_factory):
    """One for the whole run: under xdist, the workers' temporary folders share a parent (the cache
    is made for processes sharing it: entries are written atomically)."""
    root = tmp_path_factory.getbasetemp()
    directory = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "spadc-cache-shared"
    directory.mkdir(exist_ok=True)
    return directory


@pytest.fixture(autouse=True)
def _compile_cache(request, tmp_path_factory, _shared_cache_directory, monkeypatch):
    """The disk cache of compiled kernels (spadc/cache.py): one for the run, so that a model
    compiled by an earlier test loads its machine code instead of running LLVM again (half of the
    suite's CPU time is LLVM's). A test marked
    `private_cache` (one that patches the code generator, whose kernels must reach no other test,
    or one that tests the cache) gets an empty one of its own. Nothing is written to ~/.cache."""
    private = request.node.get_closest_marker("private_cache") is not None
    directory = tmp_path_factory.mktemp("spadc-cache") if private else _shared_cache_directory
    monkeypatch.setenv("SPADC_CACHE_DIR", str(directory))


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
LONG = os.environ.get("SPADC_LONG") == "1"  # the long profile
# Examples that together reach the constructs the examples use: a scalar test function, dense
# layers with dropout, a recurrent loop, a stencil loop, and `state` carried between calls (imported
# fns: tests/test_cache.py, test_examples.py). Tests that run "on every example" run on these in
# the quick profile, on all in the long one (SPADC_LONG=1, which CI runs).
QUICK_EXAMPLES = ("rosenbrock.spad", "mlp_digits.spad", "irnn.spad", "reaction_diffusion.spad",
                  "influence_balancing.spad")


def quick(cases, keep):
    """`cases` in the long profile; in the quick one those in `keep` (a case per code path: the rest
    repeat them on other programs or settings)."""
    return list(cases) if LONG else [case for case in cases if case in keep]


def profile_examples(names) -> list[str]:
    """`names` in the long profile; those of them in QUICK_EXAMPLES in the quick one."""
    return sorted(names) if LONG else sorted(n for n in names if n in QUICK_EXAMPLES)


def example_inputs(layout: dict, rng, batch: int = 3) -> dict:
    """A batch of inputs for any model: floats from a normal, integers 0 and 1 (valid labels and
    indices of any size above one)."""
    import numpy as np
    values = {}
    for spec in layout["inputs"]:
        if spec.get("state"):
            continue
        shape = (batch, *spec["shape"])
        if spec["dtype"] == "f64":
            values[spec["name"]] = 0.5 * rng.standard_normal(shape)
        elif spec["dtype"] == "i64":
            values[spec["name"]] = (np.arange(np.prod(shape, dtype=int)) % 2).reshape(shape)
        else:
            values[spec["name"]] = np.zeros(shape, dtype=bool)
    return values


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


def located_error(text: str, message: str, line: int | None = None) -> spadc.SpadcError:
    """The error that compiling `text` (named m) gives: placed (at `line` when given, with a column,
    the source line and a caret follow), and containing `message`."""
    with pytest.raises(spadc.SpadcError, match=rf"^m:{line or '[0-9]+'}:[0-9]+: error: ") as info:
        spadc.compile_source(text)
    assert message in str(info.value) and "^" in str(info.value), str(info.value)
    return info.value


def example(name: str) -> str:
    return os.path.join(EXAMPLES, name)


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """`spadc ARGS` run in this process (spadc.cli.main), as `subprocess.run` reports it: its exit
    status and what it wrote. A subprocess costs 0.4 s of imports; the entry point itself is tested
    in subprocesses elsewhere (test_cli, test_interrupts). Process-wide state the command sets (the
    memory limit's environment variable, the warnings' format and filters) is restored after."""
    from spadc import cli
    out, err = io.StringIO(), io.StringIO()
    saved_environment, saved_format, saved_cwd = dict(os.environ), warnings.formatwarning, os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("default")  # as a fresh process: each warning shown once, on stderr
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: \
                err.write(warnings.formatwarning(message, category, filename, lineno, line))
            try:
                status = cli.main([str(a) for a in args])
            except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
                status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environment)
        warnings.formatwarning = saved_format
    return subprocess.CompletedProcess(["spadc", *map(str, args)], status, out.getvalue(), err.getvalue())


TEST_CACHE_SIZE = 8  # compiled models a test process keeps for reuse (spadc keeps 32); the rest load from disk


@pytest.fixture(autouse=True, scope="session")
def _fewer_compiled_models():
    import spadc.api
    spadc.api.CACHE_SIZE = TEST_CACHE_SIZE


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_models():
    """Compiled models are kept for reuse (spadc.api._CACHE, 32 of them) and each holds its machine
    code and LLVM engine: a test process would keep 32 at all times. Each module's are freed at
    its end, so that two test processes stay well within the suite's memory budget."""
    yield
    import ctypes
    import gc

    import spadc.api
    spadc.api._CACHE.clear()
    gc.collect()
    try:  # glibc keeps freed memory for reuse; give it back (the next module's compiles differ in size)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def skew_vjp(monkeypatch, skew: float, parts=("params", "inputs")):
    """A negative control's planted bug: `spadrt.derivatives.vjp_prepared` (under `vjp` and the
    wrappers) returns the cotangents of `parts` `skew` (relative) too large."""
    from spadrt import derivatives
    real = derivatives.vjp_prepared

    def skewed(*args, **kwargs):
        result = real(*args, **kwargs)
        for part in parts:
            setattr(result, part, {k: v * (1 + skew) for k, v in getattr(result, part).items()})
        return result

    monkeypatch.setattr(derivatives, "vjp_prepared", skewed)


# A camera projection with radial distortion (bundle adjustment's residual, small): two outputs
# of fifteen inputs and three params, for Jacobians by either mode (tests/test_derivatives.py,
# tests/test_aot.py).
PROJECTION = """input cam: f64[4]
input pt: f64[3]
input obs: f64[2]
param k: f64 = 0.1
param s: f64[2] = 1.0
let X = pt[0] * cos(cam[0]) - pt[1] * sin(cam[0]) + cam[1]
let Y = pt[0] * sin(cam[0]) + pt[1] * cos(cam[0]) + cam[2]
let Z = pt[2] + 3.0
let r2 = (X * X + Y * Y) / (Z * Z)
let d = 1.0 + k * r2
output residual = s * cam[3] * d * stack(X / Z, Y / Z) - obs
loss sum(residual * residual)
"""
