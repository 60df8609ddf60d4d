"""Builds .whl/gpu_check/: the wheels benchmarks/gpu_check.sh installs, offline, on the bare GPU machine.

That machine (docs/gpu.md; .library/device KINDS.md) has Python 3.12, PyTorch 2.11 (CUDA 13.0), transformers
5.17, peft, accelerate, sacrebleu, pyarrow, ... but no bitsandbytes, datasets, penman or smatch, and nothing can
be fetched there. This downloads, for cp312 manylinux x86_64, the packages the node needs that it lacks, plus
transformers and peft at the project's versions (the CPU proof ran those) and regex (which transformers checks at
import), every version read from
.ci/requirements.lock; builds smatch's wheel from its source (it publishes none; pure Python); and keeps of
bitsandbytes' wheel only its CPU and CUDA 13 libraries (43 MB -> a few: a call carries at most 64 MiB in all).

    .venv/bin/python benchmarks/gpu_wheels.py [--dest .whl/gpu_check]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / ".ci" / "requirements.lock"
# regex: transformers 5.24 checks regex>=2025.10.22 at import (the image's is not known to be that new).
WHEELS = ["bitsandbytes", "transformers", "peft", "regex", "datasets", "dill", "multiprocess", "penman"]
FROM_SOURCE = ["smatch"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
# bitsandbytes' native libraries the GPU machine's torch (CUDA 13.x) and a CPU fallback load.
KEEP_LIBS = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")
LIMIT_BYTES = 64 * 2**20


def locked(names: list[str]) -> list[str]:
    """name==version for each name, from the lock file."""
    versions = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", LOCK.read_text(), flags=re.M))
    missing = [n for n in names if n not in versions]
    if missing:
        raise SystemExit(f"{LOCK}: no pinned version of {', '.join(missing)}")
    return [f"{n}=={versions[n]}" for n in names]


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def trim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the native libraries the GPU machine never loads (and their RECORD lines)."""
    out = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {i.filename for i in src.infolist()
                   if i.filename.endswith(".so") and not KEEP_LIBS.search(i.filename)}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "\n".join(line for line in lines if line.split(",")[0] not in dropped).encode() + b"\n"
            dst.writestr(info, data)
    out.replace(wheel)


def build(dest: Path) -> list[Path]:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *platforms, "-d", str(dest), *locked(WHEELS))
    with tempfile.TemporaryDirectory() as tmp:  # pure Python: the wheel built here installs anywhere
        pip("wheel", "--no-deps", "-w", tmp, *locked(FROM_SOURCE))
        for wheel in Path(tmp).glob("*.whl"):
            shutil.move(str(wheel), dest / wheel.name)
    for wheel in dest.glob("bitsandbytes-*.whl"):
        trim_bitsandbytes(wheel)
    return sorted(dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl" / "gpu_check")
    args = parser.parse_args(argv)
    wheels = build(args.dest)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.1f} MiB in {args.dest} (a device call carries at most 64 MiB with the checkout)")
    return 0 if total < LIMIT_BYTES - 8 * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
