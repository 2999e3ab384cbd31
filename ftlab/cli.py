"""The `ftlab` command: `doctor`, `prefetch`, `bench`, `exercises build|grade`.

Expected errors (a bad FTLAB_PROFILE, a missing folder, an unreadable file, a bad option) end
in one line that says what went wrong and a non-zero exit status, never a traceback;
FTLAB_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys


class UsageError(Exception):
    """A command line that a parser refused; its message is the one line to print."""


def main(argv: list[str] | None = None) -> int:
    """Run one `ftlab` subcommand and return its exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    commands = {
        "doctor": _doctor,
        "prefetch": _prefetch,
        "bench": _bench,
        "exercises": _exercises,
    }
    if not args or args[0] in ("-h", "--help") or args[0] not in commands:
        known = ", ".join(commands)
        print(f"usage: ftlab {{{known}}} [options]   (ftlab COMMAND --help for details)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    if os.environ.get("FTLAB_DEBUG"):
        return commands[args[0]](args[1:])
    try:
        with _one_line_usage_errors():
            return commands[args[0]](args[1:])
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an expected error of any command: one line, no traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(
            f"error: {message or type(error).__name__} (FTLAB_DEBUG=1 shows more)", file=sys.stderr
        )
        return 1


@contextlib.contextmanager
def _one_line_usage_errors():
    # argparse prints a usage block and exits; every subcommand's parser raises instead.
    original = argparse.ArgumentParser.error

    def error(parser: argparse.ArgumentParser, message: str):
        raise UsageError(f"{parser.prog}: {message} (see `{parser.prog} --help`)")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def _doctor(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ftlab doctor", description="Report the environment.")
    parser.parse_args(args)
    from ftlab.setup.env import doctor
    from ftlab.setup.settings import banner

    banner()
    doctor()
    return 0


def _prefetch(args: list[str]) -> int:
    from ftlab.setup.prefetch import main as prefetch_main

    return prefetch_main(args)


def _bench(args: list[str]) -> int:
    from ftlab.bench.run import main as bench_main

    return bench_main(args)


def _exercises(args: list[str]) -> int:
    from ftlab.exercises.grading import main as grading_main

    return grading_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
