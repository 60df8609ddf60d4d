"""One flag vocabulary across the commands: what a flag is called, and the older spellings still accepted.

| what                  | flag                               | still accepted                                    |
|-----------------------|------------------------------------|---------------------------------------------------|
| where outputs go      | `-o/--output`                      | `--output-dir` (train), `--out` (report)          |
| languages             | `--langs a b`                      | `--langs a,b` (translate, parse, tree suggest)    |
| corpora               | `--corpus a b`                     | `--corpus a,b`                                    |
| tree levels           | `-ln/--levels a b`                 | `--level-names` (train), `"a", "b"` and `a,b`     |
| on/off switches       | `--evaluate` / `--no-evaluate`     | `--evaluate true` / `--evaluate false`            |
| how much is printed   | `-v/--verbose`, `-q/--quiet`       |                                                   |
"""

from __future__ import annotations

import argparse

from hql_ray.settings.tree import parse_level_args

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def add_output(parser, help: str, *old: str, required: bool = False, metavar: str = "OUT") -> None:
    """`-o/--output` (dest `output`), with a command's older spellings as aliases."""
    parser.add_argument("-o", "--output", *old, dest="output", required=required, metavar=metavar, help=help)


def add_levels(parser, help: str, *old: str) -> None:
    """`-ln/--levels LEVEL ...` (dest `levels`); every spelling of the original's list works (parse_level_args)."""
    parser.add_argument("-ln", "--levels", *old, dest="levels", nargs="+", metavar="LEVEL", default=None, help=help)


def add_langs(parser, help: str, required: bool = False) -> None:
    """`--langs a b` (dest `langs`); `a,b` works too: read it with `words`."""
    parser.add_argument("--langs", nargs="+", required=required, metavar="CODE", default=None, help=help)


def words(values: list[str] | str | None) -> list[str] | None:
    """`a b`, `a,b`, `"a", "b"` -> [a, b] (None stays None)."""
    return None if values is None else parse_level_args(values)


def add_verbosity(parser) -> None:
    """-v/--verbose (Ray's and the libraries' start-up lines, workers' logs) and -q/--quiet (errors and the result
    only); neither: our progress and warnings."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="show Ray's, the workers' and the libraries' logs")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only errors and the result: no progress, no warnings (train.log keeps them)")


def add_switch(parser, name: str, help: str) -> None:
    """`--NAME` / `--no-NAME` (default None: not given), the older `--NAME true|false` still accepted
    (`accept_switch_words`)."""
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help)


def switch_words(argv: list[str], names: list[str]) -> list[str]:
    """`--NAME true|false` and `--NAME=true|false` rewritten as `--NAME` / `--no-NAME` (argv otherwise as is)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name[2:] in names:
            following = argv[i + 1] if i + 1 < len(argv) else "-"
            if not eq and not following.startswith("-") and "=" not in following:  # its value (not an override)
                value, i = following, i + 1
            elif not eq:
                value = "true"
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise argparse.ArgumentTypeError(f"{name} takes true or false (or write --no-{name[2:]}), got {value!r}")
            arg = name if value.lower() in TRUE_WORDS else f"--no-{name[2:]}"
        out.append(arg)
        i += 1
    return out


def accept_switch_words(parser: argparse.ArgumentParser, names: list[str]) -> None:
    """Let `parser` read the older `--NAME true|false` of its switches `names`: argv is rewritten before parsing
    (an argparse action with an optional value would swallow a `section.key=value` override after the flag)."""
    plain = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        try:
            argv = switch_words(argv, names)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
        return plain(argv, namespace)

    parser.parse_known_args = parse_known_args
