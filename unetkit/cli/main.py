"""Entry point of the ``unetkit`` command: parse, dispatch, and turn known errors into one line.

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which registers the
subcommand and sets ``func`` (``args -> exit code``) as its default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import typing
from collections.abc import Sequence

from .. import __version__

#: Subcommand modules, in ``--help`` order.
COMMANDS = ("train", "plan", "evaluate", "predict", "export", "info", "data", "bench")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line too (argparse prints the whole usage first).

    Subcommand parsers are created with the parent's class, so every subcommand reports this way.
    """

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    """Run the command line; return the exit code (0 ok, 1 failed run, 2 bad input, 130 interrupted,
    143 terminated by SIGTERM)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, also after the subcommand
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the subcommand whose options these are not
        prog = f"unetkit {args.command}" if args.command else "unetkit"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see '{prog} --help')\n")
    args.debug = debug
    if args.command is None:
        parser.print_help()
        return 2
    label = f"unetkit {args.command}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: say which process failed
        label += f" (rank {os.environ.get('RANK', '?')} of {os.environ['WORLD_SIZE']})"
    try:
        check_encoder(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        from ..signals import EXIT_TERMINATED, Terminated

        if isinstance(e, Terminated):
            print("unetkit: terminated (SIGTERM)", file=sys.stderr)
            return EXIT_TERMINATED
        print("unetkit: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, ImportError) as e:  # bad input: the user can fix it
        if args.debug:
            raise
        print(f"{label}: error: {flag_names(one_line(e), args)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a failed run (or a bug): one line, traceback with --debug
        if args.debug:
            raise
        print(f"{label}: error: {type(e).__name__}: {one_line(e)} "
              "(run 'unetkit --debug ...' for the traceback)", file=sys.stderr)
        return 1


def check_encoder(args: argparse.Namespace) -> None:
    """Refuse an unknown ``--encoder`` up front, naming the flag (the model is built only after the data)."""
    name = getattr(args, "encoder", None)
    if not isinstance(name, str) or name.startswith("timm:"):
        return
    from ..models.encoders import encoder_names

    if name not in encoder_names():
        raise CLIError(f"--encoder {name}: unknown encoder; choose one of {', '.join(encoder_names())} "
                       "or timm:<name>")


def one_line(e: BaseException) -> str:
    """The exception's message on one line (no traceback).

    An ``OSError`` built as ``OSError(errno, message)`` reads ``[Errno 13] message``; the number says
    nothing to a user, so only the message is kept (it names the file).
    """
    if isinstance(e, OSError) and e.strerror and e.filename is None and e.args[1:] == (e.strerror,):
        text = str(e.strerror)
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__


def flag_names(text: str, args: argparse.Namespace) -> str:
    """Name the flag in option errors: ``flags: patch_size must ...`` becomes ``--patch-size must ...``.

    The option checks shared with config files say where a value came from (a file, or ``flags``); on the
    command line the flag the user typed is the clearer name. Only options given on this command line
    (attributes of ``args``) are rewritten.
    """
    m = re.match(r"flags: ([a-z][a-z0-9_]*)\b", text)
    if m is None or not hasattr(args, m.group(1)):
        return text
    return "--" + m.group(1).replace("_", "-") + text[m.end():]
