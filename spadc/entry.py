"""The `spadc` command's entry point: the command line (spadc/cli.py) loaded and run so that a Ctrl-C
at any moment, while NumPy and LLVM load too, ends the command with one line and exit status 130.

Invariant: this module imports nothing but the standard library's `os`, `signal` and `sys` before
its try block (spadc/__init__.py loads its public names lazily, for this). A Ctrl-C in the first
milliseconds, while Python itself starts (before any of spadc runs), is Python's own.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


def main(argv: list[str] | None = None) -> int:
    try:
        run_command = _load_command_line()
        return run_command(argv)
    except KeyboardInterrupt:  # cli.main reports an interrupt during a command itself
        print("spadc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`spadc run ... | head -1`): stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _load_command_line():
    """spadc.cli, imported so that a Ctrl-C during the imports is a KeyboardInterrupt: NumPy turns an
    interrupt inside its own import into an ImportError ("PyCapsule_Import could not import ...")."""
    interrupted = []

    def note_and_raise(signum, frame):
        interrupted.append(signum)
        if not _dropped_if_raised(frame):  # else the check after the imports raises it
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note_and_raise) if signal.getsignal(signal.SIGINT) is \
        signal.default_int_handler else None
    try:
        from .cli import main as run_command
    except Exception:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted:  # an import that caught the KeyboardInterrupt and went on (a bare `except:`)
        raise KeyboardInterrupt
    return run_command


def _dropped_if_raised(frame) -> bool:
    """Whether an exception raised in `frame` would be printed and dropped, the import going on:
    in importlib's module-lock callback (a weakref callback)."""
    return frame is not None and frame.f_code.co_name == "cb" and \
        frame.f_globals.get("__name__") == "importlib._bootstrap"


def _silence_stdout():
    """Point stdout at /dev/null so that Python's final flush of it does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
