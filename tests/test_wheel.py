"""The package as a user gets it (slow): a wheel built from this repository holds the configs, language files,
sample corpus, licence and py.typed; its build and its install print no deprecation warning of ours; installed in
a fresh virtual environment, `hql-ray train` with no flags runs the demo from an empty folder, with none of Ray's
or transformers' start-up lines.

The fresh venv gets the locked packages of the environment running the tests through a .pth file (its paths are
added after the venv's own site-packages, so the wheel's hql_ray is the one imported, and nothing is downloaded);
the wheel itself is installed with --no-deps --no-index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SHIPPED = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
WARNINGS = ("deprecat", "BuildBackendWarning", "SetuptoolsWarning")
STARTUP_NOISE = ("Started a local Ray instance", "Token authentication is enabled", "Writing model shards")

pytestmark = pytest.mark.slow


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def ours(output: str) -> list[str]:
    """Warning lines in a build's or an install's output."""
    return [line for line in output.splitlines() if any(w.lower() in line.lower() for w in WARNINGS)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the checkout (so the build leaves nothing in it), offline, with these setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SHIPPED))
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", tmp / "dist", src])
    assert ours(built.stdout + built.stderr) == []
    [found] = (tmp / "dist").glob("hql_ray-*.whl")
    return found


def test_the_wheel_holds_the_demos_files_the_licence_and_its_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for path in ("hql_ray/py.typed", "hql_ray/bundled/configs/demo.yaml", "hql_ray/bundled/configs/pthql.yaml",
                 "hql_ray/bundled/language_files/12langs_pthql.csv", "hql_ray/bundled/data/sample/README.md",
                 "hql_ray/bundled/data/sample/amr3/deu_Latn/amr3_deu_Latn_train.tsv"):
        assert path in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta and "Requires-Python: >=3.11" in meta
    assert not [n for n in names if n.startswith("hql_ray/bundled/data/") and "/sample/" not in n]


@pytest.mark.timeout(3600)
def test_a_wheel_in_a_fresh_venv_runs_the_demo_from_an_empty_folder(wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    locked = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_locked_packages.pth").write_text("".join(f"{p}\n" for p in locked))
    installed = run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    assert ours(installed.stdout + installed.stderr) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    where = run([python, "-c", "import hql_ray; print(hql_ray.__file__)"], cwd=empty, env=env).stdout
    assert where.startswith(str(venv))  # the wheel's, not this checkout's

    demo = run([venv / "bin" / "hql-ray", "train"], cwd=empty, env=env, timeout=3300)
    assert f"using the demo's ({site / 'hql_ray' / 'bundled' / 'configs' / 'demo.yaml'})" in demo.stderr
    assert not [n for n in STARTUP_NOISE if n in demo.stdout + demo.stderr]
    run_dir = empty / "runs" / "demo"
    assert f"done: {run_dir}/results.md" in demo.stdout
    assert len(list((run_dir / "final").iterdir())) == 12
    assert (run_dir / "config.yaml").is_file() and "run finished" in (run_dir / "train.log").read_text()
