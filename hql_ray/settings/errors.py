"""Errors that reach the user as one clear line instead of a traceback.

Every problem with the user's input (a tree file, a corpus, a flag, a config) is raised as an
``InputError`` naming the file and line, so the CLI can print ``file:line: problem`` and exit 2.
"""

from __future__ import annotations

from pathlib import Path


class HQLError(Exception):
    """Base class for errors hql-ray reports without a traceback."""


class InputError(HQLError):
    """Bad user input: names the file, the line (1-based) or row, and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None, line: int | None = None):
        self.problem = problem
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = self.path or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        return f"{where}: {self.problem}" if where else self.problem


class ConfigError(InputError):
    """A bad flag, config key or value, found before any training starts."""
