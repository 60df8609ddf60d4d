"""`hql-ray` command line: one subcommand per module in hql_ray.commands.

Each command module defines ``add_parser(subparsers)`` (registering its flags) and
``run(args) -> int``. Input problems raise ``InputError`` and are printed as one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from hql_ray.commands import data, evaluate, fetch_eval_models, generate, parse, push, report, train, translate, tree
from hql_ray.settings.errors import HQLError

# Order = order shown in --help. Every command module keeps torch and Ray out of its top-level
# imports, so `hql-ray tree` or `hql-ray --help` starts in a fraction of a second.
COMMANDS = [train, tree, data, report, evaluate, fetch_eval_models, generate, push, translate, parse]


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("hql-ray")
    except PackageNotFoundError:
        from hql_ray import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hql-ray",
        description="Hierarchical QLoRA AMR-to-text training over a language tree, on Ray. "
        "The demo: hql-ray train (PTHQL on the bundled sample, a tiny mT5, local Ray on CPU).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # bare `hql-ray`: the commands (the demo is `hql-ray train`)
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except HQLError as err:
        print(f"hql-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `hql-ray tree ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("hql-ray: interrupted; finished nodes are kept (re-run with --resume)", file=sys.stderr)
        return 130


def console_main() -> None:
    """The `hql-ray` command. After Ctrl-C, exit at once: node threads may still sit in Ray calls
    that the driver's Ray shutdown is ending, and a normal exit would wait for them (a second
    Ctrl-C must never be needed)."""
    code = main()
    if code in (130, 143):  # Ctrl-C, SIGTERM
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
