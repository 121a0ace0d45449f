"""Entry point of the ``unetkit`` command: parse, dispatch, and turn known errors into one line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which registers the
subcommand and sets ``func`` (``args -> exit code``) as its default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from .. import __version__

#: Subcommand modules, in ``--help`` order.
COMMANDS = ("train", "plan", "evaluate", "predict", "export", "info", "data", "bench")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetkit",
        description="Train, evaluate, run and export UNet segmentation models. "
                    "Run 'unetkit train' with no arguments for a demo on a real chest CT.",
    )
    parser.add_argument("--version", action="version", version=f"unetkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 failed run, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, also after the subcommand
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 2
    label = f"unetkit {args.command}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: say which process failed
        label += f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("unetkit: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, ImportError) as e:  # bad input: the user can fix it
        if args.debug:
            raise
        print(f"{label}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a failed run (or a bug): one line, traceback with --debug
        if args.debug:
            raise
        print(f"{label}: error: {type(e).__name__}: {one_line(e)} "
              "(run 'unetkit --debug ...' for the traceback)", file=sys.stderr)
        return 1


def one_line(e: BaseException) -> str:
    """The exception's message on one line (no traceback)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text
