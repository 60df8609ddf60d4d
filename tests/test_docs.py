"""Every command the README and docs/ show is one the code accepts as written: each `hql-ray ...` line of a
shell block parses with the real argument parser, the files it names exist, and every `python
benchmarks/*.py` script named is there and answers --help. (Running them is the other tests' job: a
real run needs a GPU, the hub or the licensed corpora, which the docs say where it matters.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hql_ray.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = ("", "bash", "sh", "console", "shell")


def shell_blocks(text: str) -> list[str]:
    """The bodies of the page's fenced blocks marked as shell (or unmarked), fences paired in order."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, lang = [], line.strip()[3:].strip()
            else:
                if lang in SHELL_FENCES:
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks
REPO_FILES = re.compile(r"^(configs|language_files|data/sample|benchmarks|deploy)/\S+$")


def shell_lines(page: Path) -> list[str]:
    """The commands of a page's shell blocks: continuation lines joined, comments and prompts stripped,
    pipelines cut to their `hql-ray` part."""
    out = []
    for block in shell_blocks(page.read_text(encoding="utf-8")):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            line = line.split(" #", 1)[0].strip()
            line = line.split(" -- ", 1)[1] if " -- hql-ray" in line or " -- python -m hql_ray" in line else line
            line = line.replace("python -m hql_ray ", "hql-ray ")
            line = re.sub(r"\S*python3?(\.\d+)? benchmarks/", "python benchmarks/", line)
            for part in line.split("|"):
                part = part.strip()
                if part.startswith(("hql-ray", ".venv/bin/hql-ray", "python benchmarks/")):
                    out.append(part)
            for part in line.split("&&"):
                if part.strip().startswith(".venv/bin/hql-ray"):
                    out.append(part.strip())
    return out


COMMANDS = sorted({(page.relative_to(REPO).as_posix(), cmd) for page in PAGES for cmd in shell_lines(page)})


def test_the_pages_show_commands():
    assert len([c for c in COMMANDS if "hql-ray" in c[1]]) >= 15


@pytest.mark.parametrize("page,command", [c for c in COMMANDS if "hql-ray" in c[1]])
def test_every_hql_ray_command_parses_and_its_files_exist(page, command, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = shlex.split(command.replace(".venv/bin/hql-ray", "hql-ray"))[1:]
    argv = [a for a in argv if a not in ("<", ">")]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse refused it (or printed --help / --version: code 0)
        assert exit_.code == 0, f"{page}: `{command}` does not parse"
    for arg in argv:
        if REPO_FILES.match(arg) and not any(ch in arg for ch in "*<>{}"):
            assert (REPO / arg).exists(), f"{page}: `{command}` names {arg}, which is not in the repository"


SCRIPT = re.compile(r"(?:python3?|bash) (benchmarks/[\w/]+\.(?:py|sh))\b")  # in shell blocks and inline code
BENCHMARKS = sorted({(page.relative_to(REPO).as_posix(), f"python {m}") for page in PAGES
                     for m in SCRIPT.findall(page.read_text(encoding="utf-8"))})


def test_every_benchmark_named_is_there():
    assert len(BENCHMARKS) >= 10
    missing = [f"{page}: {cmd}" for page, cmd in BENCHMARKS if not (REPO / shlex.split(cmd)[1]).is_file()]
    assert not missing, missing


@pytest.mark.slow
@pytest.mark.parametrize("page,command", [b for b in BENCHMARKS if b[1].endswith(".py")])  # .sh: run on a GPU
def test_every_benchmark_named_answers_help(page, command):
    script = REPO / shlex.split(command)[1]
    out = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{page}: {command}: {out.stderr[-2000:]}"
