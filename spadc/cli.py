"""The `spadc` command line (INTERFACE.md): `spadc` and `python -m spadc` are the same program.

Invariants:
- Exit 0 on success, 1 on a user error (one diagnostic on stderr, never a traceback), 2 on bad
  usage (argparse's own convention).
- Commands print results on stdout and diagnostics on stderr.
"""

from __future__ import annotations

import argparse
import sys

from . import frontend, passes
from .errors import SpadcError
from .ir.printer import format_program


def _check(args) -> int:
    frontend.lower(frontend.check_file(args.file))
    print("ok")
    return 0


def _ir(args) -> int:
    program = frontend.lower(frontend.check_file(args.file), dump_after=args.dump_after)
    sys.stdout.write(format_program(program))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spadc", description="Compile and run .spad differentiable programs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="parse and type-check a file: prints ok, or diagnostics and exits 1")
    check.add_argument("file", metavar="FILE.spad")
    check.set_defaults(run=_check)

    ir = commands.add_parser("ir", help="print the IR of a file")
    ir.add_argument("file", metavar="FILE.spad")
    ir.add_argument("--dump-after", choices=passes.PASS_NAMES, default=None,
                    help="print the IR as it is after this pass (default: after the whole pipeline)")
    ir.set_defaults(run=_ir)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except SpadcError as error:
        print(str(error), file=sys.stderr)
        return 1
    except RecursionError:
        print(f"{args.file}: error: the program is nested too deeply to compile", file=sys.stderr)
        return 1
