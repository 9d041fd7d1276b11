"""Ctrl-C and a closed pipe on the command line (issue 29): whenever SIGINT lands (while Python
loads NumPy and LLVM, while the JIT compiles, while training runs), the command ends with exit 130
and one line on stderr; a reader that goes away ends it quietly. Never a traceback, never a
Ctrl-C swallowed by a callback from LLVM so that training runs on and exits 0."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from spadc.backend.jit import interrupts_deferred

from conftest import example

# Seconds after the start at which SIGINT is sent. Here spadc's imports run from about 0.03 s to
# 0.35 s (before, Python itself starts up: a Ctrl-C there is Python's own, a traceback) and the cold
# compile of mlp_digits (three kernels, --no-cache) ends near 0.95 s: these moments fall in each
# part, two in the compile (0.8 s swallowed the Ctrl-C once in two tries before the fix).
# The first is late enough for a loaded machine's slower start.
INTERRUPT_MOMENTS = (0.2, 0.5, 0.8, 1.4)
HANG_SECONDS = 30  # a child that has not exited by then hangs (it takes about a second)
TRAIN = ["train", example("mlp_digits.spad"), "--data", os.path.join(os.path.dirname(example("x")), "data", "digits_train.npz"),
         "--epochs", "50", "--no-cache", "--quiet"]


def _command(*args):
    return subprocess.Popen([sys.executable, "-m", "spadc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("moment", INTERRUPT_MOMENTS)
def test_ctrl_c_at_any_moment_is_one_line_and_exit_130(moment):
    process = _command(*TRAIN)
    try:
        process.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    # 130, or death by SIGINT itself (seen once in five runs on a loaded machine, after the one line
    # was printed; its cause is not understood): a shell reports both as 130.
    assert process.returncode in (130, -signal.SIGINT), (moment, process.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and lines[0].startswith("spadc"), (moment, stderr)


def test_an_interrupt_inside_the_deferred_block_is_raised_at_its_end():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker may ignore SIGINT
    try:
        reached_the_end = False
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # Python's handler runs between bytecodes: give it many chances
                    pass
                reached_the_end = True
        assert reached_the_end and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`spadc run ... | head -1`, `spadc train ... --quiet | head -1`: the reader leaves, here before
    the first line (its end of the pipe closed at once), so every write of the command fails."""
    np.savez(tmp_path / "in.npz", x=np.zeros((20, 64)), label=np.zeros(20, dtype=np.int64))
    for args in (["run", example("mlp.spad"), "--inputs", str(tmp_path / "in.npz")], TRAIN[:-4] + ["--epochs", "1", "--quiet"]):
        process = _command(*args)
        process.stdout.close()
        stderr = process.stderr.read()
        process.wait(timeout=120)
        assert process.returncode == 141 and stderr == "", (args, process.returncode, stderr)


def test_an_interrupt_while_numpy_loads_is_still_an_interrupt(monkeypatch):
    """NumPy turns a KeyboardInterrupt inside its own import into an ImportError; the entry point
    knows a SIGINT arrived and reports the interrupt. Simulated: an import that is interrupted and
    re-raised as ImportError, as NumPy's is."""
    from spadc import entry

    def interrupted_import(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        raise AssertionError("the SIGINT handler did not run")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import builtins
        real_import = builtins.__import__

        def numpy_like(name, *args, **kwargs):
            if name == "cli":
                try:
                    interrupted_import()
                except KeyboardInterrupt:
                    raise ImportError("PyCapsule_Import could not import module \"datetime\"") from None
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", numpy_like)
        with pytest.raises(KeyboardInterrupt):
            entry._load_command_line()
    finally:
        signal.signal(signal.SIGINT, previous)


POOL_START_INTERRUPTED = """
import os, signal, sys, threading
import numpy as np
import spadc
# Python's own handler, as in a terminal: a shell that starts a job in the background (pytest
# included) hands it SIGINT ignored, and then no Ctrl-C would ever arrive.
signal.signal(signal.SIGINT, signal.default_int_handler)
model = spadc.compile_file(sys.argv[1])
model.init_params(0)
real_start = threading.Thread.start
def start(self):  # a Ctrl-C lands while the runtime's pool starts a worker thread
    real_start(self)
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):  # Python's handler runs between bytecodes: give it many chances
        pass
threading.Thread.start = start
try:
    model.loss(x=np.zeros((300, 64)), label=np.zeros(300, dtype=np.int64), threads=2)  # 3 chunks: the pool
except KeyboardInterrupt:
    print("interrupted", flush=True)
threading.Thread.start = real_start
sys.exit(130)
"""


def test_an_interrupt_while_the_pool_starts_a_thread_still_lets_the_process_exit():
    """Found by sending SIGINT at many moments under load: `spadc train` printed its one line at
    the end of an epoch (the pool's first use) and never exited, waiting for a worker thread that
    the interrupted `Thread.start` left unregistered."""
    child = subprocess.run([sys.executable, "-c", POOL_START_INTERRUPTED, example("mlp.spad")], capture_output=True,
                           text=True, timeout=HANG_SECONDS)
    assert child.returncode == 130 and child.stdout.strip() == "interrupted", (child.returncode, child.stderr)


def test_an_interrupt_that_an_import_swallows_is_not_forgotten(monkeypatch):
    # A Ctrl-C that lands in an import catching every exception and going on (a bare `except:`, as
    # some libraries' optional imports have) was lost: the command then ran to its end, exit 0
    # (seen once at 1.4 s on a loaded machine). The entry point remembers it and raises it after.
    import types
    from spadc import entry

    class SwallowingModule(types.ModuleType):
        def __getattr__(self, name):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # Python's handler runs between bytecodes
                    pass
            except BaseException:  # noqa: BLE001 - the swallowing import this test imitates
                pass
            return lambda argv=None: 0

    monkeypatch.setitem(sys.modules, "spadc.cli", SwallowingModule("spadc.cli"))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a test worker may ignore SIGINT
    try:
        with pytest.raises(KeyboardInterrupt):
            entry._load_command_line()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_in_importlibs_lock_callback_waits_for_the_imports_end():
    # Raised there, a KeyboardInterrupt is printed as "Exception ignored in ..." and dropped (seen
    # once at 0.2 s): the handler only notes it, and the check after the imports raises it.
    import sys
    from spadc import entry
    namespace = {"__name__": "importlib._bootstrap"}
    exec("def cb():\n    import sys\n    return sys._getframe()", namespace)
    assert entry._dropped_if_raised(namespace["cb"]())
    assert not entry._dropped_if_raised(sys._getframe()) and not entry._dropped_if_raised(None)
