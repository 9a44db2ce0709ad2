"""The ``fanout-ingest`` command: one engine, run from a terminal.

Subcommands live one per module, each exposing a ``COMMAND`` (``common.Command``:
name, help, ``add_arguments``, ``run``). To add one, write the module and add its
``COMMAND`` to ``COMMANDS`` below; nothing else changes. Heavy imports (aioboto3,
rich, moto) stay inside the functions that need them, so ``--help`` and ``plan``
start fast.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ingest_core.cli import backfill, bench, demo, launch, listing, plan, run, show, state
from ingest_core.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    PROG,
    Command,
    CommandError,
    UsageError,
    report_usage_error,
)
from ingest_core.errors import StateError
from ingest_core.redact import scrub_exception, scrubbed_stdio

COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        demo.COMMAND,
        backfill.COMMAND,
        listing.COMMAND,
        run.COMMAND,
        plan.COMMAND,
        launch.COMMAND,
        bench.COMMAND,
        state.COMMAND,
        show.COMMAND,
    )
}

DESCRIPTION_WIDTH = 79

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


def _version() -> str:
    try:
        return version("fanout-ingest")
    except PackageNotFoundError:
        return "unknown"


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per registered command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch many HTTP API requests concurrently and stream each body into"
        " S3 or a local folder, with exact per-request results.",
        epilog="The event, options, keys, result, manifest and failure kinds: docs/CONTRACT.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (commands or COMMANDS).values():
        description = textwrap.fill(command.description or command.help, DESCRIPTION_WIDTH)
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=description,
            epilog=command.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fanout-ingest`` with ``argv`` (default: the process's arguments).

    Returns:
        The exit code: 0 every item succeeded, 1 some did not, 2 bad usage,
        130 stopped by Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    command: Command = args._command
    # Everything a command prints passes the scrubber (docs/RELIABILITY.md, security model).
    with scrubbed_stdio():
        return _run(command, args)


def _run(command: Command, args: argparse.Namespace) -> int:
    try:
        return command.run(args)
    except UsageError as exc:
        return report_usage_error(command.name, exc)
    except (CommandError, StateError) as exc:
        print(f"{PROG} {command.name}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"\n{PROG} {command.name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        scrub_exception(exc)  # Python prints it after stdio is restored: scrub it first
        raise
