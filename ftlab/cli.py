"""The `ftlab` command: `doctor`, `prefetch`, `bench`, `exercises build|grade`."""

from __future__ import annotations

import argparse
import sys


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
    return commands[args[0]](args[1:])


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
