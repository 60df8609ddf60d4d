"""What the head holds while a real-size tree runs: the dry run with real LoRA shapes, before and after.

    python benchmarks/head_memory.py                      # configs/pthql.yaml, mt5-large r=256 shapes
    python benchmarks/head_memory.py --baseline 836fbe9   # the same dry run on an older driver, side by side

Each run is `hql-ray train --config CONFIG --simulate 0 --simulate-adapters real` in a subprocess:
every node returns random tensors with the real adapter shapes (1.17 GB at mT5-large r=256), so the
driver receives, saves, hands on and exports real bytes. Sampled every 0.5 s: the driver's RSS and USS
(private memory; RSS also counts object-store pages the driver mapped), and /dev/shm (Ray's object
store). At the end: bytes under the run folder. The leaves' exports (4.7 GB each for a stacked PTHQL
leaf) are counted and deleted as soon as they are complete, so the run fits this machine's disk.

The baseline is a git worktree of an older commit with today's dry-run files laid over it
(simulate.py, ray_worker.py, commands/train.py: the real-shape adapters), so both drivers run the
same nodes; an older driver exports nothing in a dry run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
OVERLAY = ["hql_ray/training/simulate.py", "hql_ray/orchestration/ray_worker.py", "hql_ray/commands/train.py"]


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def snapshot(ref: str | None, into: Path) -> Path:
    """The code to run: this working tree as it is, or `ref` with today's dry-run files over it."""
    if ref is None:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.split()
    else:
        subprocess.run(f"git archive {ref} | tar -x -C {into}", shell=True, cwd=REPO, check=True)
        files = OVERLAY
    for name in files:
        src = REPO / name
        if src.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / name)
    return into


def anonymous_bytes(pid: int) -> int:
    """The process's own memory (heap, arrays it allocated): `Anonymous:` of /proc/<pid>/smaps_rollup.
    Unlike RSS it leaves out file pages (mapped adapter files) and shared object-store pages."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(code: Path, config: str, out: Path, label: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hql_ray", "train", "--config", str(REPO / config), "--simulate", "0",
           "--simulate-adapters", "real", "--output-dir", str(out), "--plain", "run.name=hm",
           "data.dir=" + str(REPO / "data" / "sample")]
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    shm0 = shutil.disk_usage("/dev/shm").used
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"rss": 0, "uss": 0, "anon": 0, "shm": 0, "exports": 0, "exported": 0}
    now = {"rss": 0, "anon": 0}
    by_nodes: list[tuple[int, float, float]] = []  # (nodes done, driver RSS GB, anonymous GB) as each finishes
    done = threading.Event()
    lines: list[str] = []

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if ": done (" in line:
                by_nodes.append((len(by_nodes) + 1, now["rss"] / 1e9, now["anon"] / 1e9))

    def sampler():
        driver = psutil.Process(proc.pid)
        final = out / "hm" / "final"
        while not done.is_set():
            try:
                info = driver.memory_full_info()
                peak["rss"], peak["uss"] = max(peak["rss"], info.rss), max(peak["uss"], info.uss)
                now["rss"], now["anon"] = info.rss, anonymous_bytes(proc.pid)
                peak["anon"] = max(peak["anon"], now["anon"])
            except (psutil.Error, OSError):
                pass
            peak["shm"] = max(peak["shm"], shutil.disk_usage("/dev/shm").used - shm0)
            if final.exists():  # a finished export is a folder without a temp name: count it, free the disk
                for leaf in [p for p in final.iterdir() if p.is_dir() and not p.name.startswith(".")]:
                    peak["exports"] += tree_bytes(leaf)
                    peak["exported"] += 1
                    shutil.rmtree(leaf, ignore_errors=True)
            time.sleep(0.5)

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    rc = proc.wait()
    done.set()
    threads[1].join()
    seconds = time.time() - started
    result = {"label": label, "rc": rc, "seconds": round(seconds), "peak_rss_gb": peak["rss"] / 1e9,
              "peak_uss_gb": peak["uss"] / 1e9, "peak_anon_gb": peak["anon"] / 1e9, "by_nodes": by_nodes,
              "peak_shm_gb": peak["shm"] / 1e9,
              "run_folder_gb": tree_bytes(out / "hm") / 1e9, "exports_gb": peak["exports"] / 1e9,
              "exports": peak["exported"]}
    if rc != 0:
        print("".join(lines[-30:]), file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/pthql.yaml")
    parser.add_argument("--baseline", help="an older commit to run the same dry run on, first")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir, removed)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="hql-head-"))
    rows = []
    try:
        for label, ref in ([("baseline " + args.baseline, args.baseline)] if args.baseline else []) + [("now", None)]:
            code = snapshot(ref, Path(tempfile.mkdtemp(prefix="code-", dir=work)))
            row = measure(code, args.config, work / f"out-{len(rows)}", label)
            rows.append(row)
            print(f"{row['label']}: rc {row['rc']}, {row['seconds']} s, driver peak RSS {row['peak_rss_gb']:.2f} GB "
                  f"(USS {row['peak_uss_gb']:.2f}, anonymous {row['peak_anon_gb']:.2f}), object store (/dev/shm) peak {row['peak_shm_gb']:.2f} GB, "
                  f"run folder {row['run_folder_gb']:.2f} GB + exports {row['exports_gb']:.2f} GB "
                  f"({row['exports']} leaves)", flush=True)
            print("  driver RSS / anonymous GB as nodes finish: " + ", ".join(
                f"{n}: {rss:.2f}/{anon:.2f}" for n, rss, anon in row["by_nodes"]), flush=True)
            shutil.rmtree(work / f"out-{len(rows) - 1}", ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| driver | wall | driver peak RSS | peak USS | peak anonymous | object store peak | node adapters written | exports written |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['seconds']} s | {r['peak_rss_gb']:.2f} GB | {r['peak_uss_gb']:.2f} GB | "
              f"{r['peak_anon_gb']:.2f} GB | "
              f"{r['peak_shm_gb']:.2f} GB | {r['run_folder_gb']:.2f} GB | {r['exports_gb']:.2f} GB ({r['exports']}) |")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
