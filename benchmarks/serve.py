"""Serving (issue 24): a mixed-language request stream through `hql-ray serve` against `hql-ray generate`
run language after language, on the same finished run and the same graphs, side by side in one run.

    .venv/bin/python benchmarks/serve.py                      # the demo's run (runs/demo: `hql-ray train` first)
    .venv/bin/python benchmarks/serve.py --run RUN --per-language 30 --clients 16 --max-batch 32

The graphs: the first --per-language graphs of each language's test split of the bundled sample
(data/sample/amr3/<code>/amr3_<code>_test.tsv). Three sides, one after the other:

- **generate**: `hql-ray generate RUN --lang CODE FILE -o OUT`, one process per language, one language
  after the other, as a user without a server runs it (each loads the base and its adapter). A graph's
  latency is from the start of the stream to the end of its language's command.
- **generate, warm**: the same `Generator` in this process, every language loaded before the clock
  starts, generating language after language: what is left once no process start or loading is paid.
- **serve**: `hql-ray serve RUN` (its own local Ray), ready before the clock starts (time to ready is
  printed apart); the graphs interleaved across languages, one item per request, from --clients
  concurrent clients on loopback. A graph's latency is its request's round trip.

Greedy outputs are compared with the `generate` side's (they must be equal). Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, print_table, quiet  # noqa: E402


def graphs_per_language(run: Path, per_language: int) -> dict[str, list[str]]:
    from hql_ray.serving.catalog import exported_languages

    out = {}
    for lang in exported_languages(run):
        tsv = ROOT / "data" / "sample" / "amr3" / lang.code / f"amr3_{lang.code}_test.tsv"
        out[lang.code] = [line.split("\t")[0] for line in tsv.read_text(encoding="utf-8").splitlines()[:per_language]]
    return out


def summary(name: str, latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return {"side": name, "n": len(ordered), "wall": wall, "rate": len(ordered) / wall,
            "p50": statistics.median(ordered), "p99": p99}


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def run_generate_commands(run: Path, graphs: dict[str, list[str]], work: Path) -> tuple[dict, dict]:
    """`hql-ray generate` per language, one after the other: (summary, outputs by language)."""
    outputs, latencies, began = {}, [], time.perf_counter()
    for code, items in graphs.items():
        src, out = work / f"{code}.amr", work / f"{code}.txt"
        src.write_text("\n".join(items) + "\n", encoding="utf-8")
        subprocess.run([sys.executable, "-m", "hql_ray", "generate", str(run), "--lang", code, str(src), "-o", str(out)],
                       check=True, env=env(), stderr=subprocess.DEVNULL)
        done = time.perf_counter() - began
        outputs[code] = out.read_text(encoding="utf-8").splitlines()
        latencies += [done] * len(items)
    return summary("generate (a process per language)", latencies, time.perf_counter() - began), outputs


def run_generate_warm(run: Path, graphs: dict[str, list[str]]) -> dict:
    """Every language's Generator loaded first (not timed), then generation language after language."""
    from hql_ray.outputs.generate import load_generator

    generators = {code: load_generator(run, code) for code in graphs}
    for gen in generators.values():
        gen.model  # noqa: B018 - loads it before the clock starts
    latencies, began = [], time.perf_counter()
    for code, items in graphs.items():
        generators[code](items)
        latencies += [time.perf_counter() - began] * len(items)
    return summary("generate, models loaded first", latencies, time.perf_counter() - began)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body) -> tuple[float, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    began = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        data = json.loads(response.read())
    return time.perf_counter() - began, data


def start_server(run: Path, port: int, args, log: Path) -> tuple[subprocess.Popen, float]:
    """`hql-ray serve` as a user starts it; (the process, seconds until /health answers)."""
    command = [sys.executable, "-m", "hql_ray", "serve", str(run), "--port", str(port), "--max-batch",
               str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--cpus-per-replica", str(args.cpus)]
    began = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(command, stdout=err, stderr=err, env=env(), start_new_session=True)
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                if response.status == 200:
                    return proc, time.perf_counter() - began
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"hql-ray serve exited: {log.read_text()[-2000:]}")


def run_server(run: Path, graphs: dict[str, list[str]], args, work: Path) -> tuple[dict, dict, float, float]:
    """(summary, outputs by language, seconds to ready, seconds to stop after SIGTERM)."""
    port = free_port()
    proc, ready = start_server(run, port, args, work / "serve.log")
    url = f"http://127.0.0.1:{port}/generate"
    try:
        for code, items in graphs.items():  # warm-up: one request per language
            post(url, {"language": code, "amr": items[0]})
        longest = max(len(items) for items in graphs.values())
        stream = [(code, i) for i in range(longest) for code in graphs if i < len(graphs[code])]  # interleaved
        began = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda w: post(url, {"language": w[0], "amr": graphs[w[0]][w[1]]}), stream))
        wall = time.perf_counter() - began
    finally:
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        stop = time.perf_counter() - stopping
    outputs = {code: [""] * len(items) for code, items in graphs.items()}
    for (code, i), (_, body) in zip(stream, answers):
        outputs[code][i] = body["text"]
    side = summary(f"serve ({args.clients} clients, batch {args.max_batch})", [t for t, _ in answers], wall)
    return side, outputs, ready, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="a finished run (default runs/demo)")
    parser.add_argument("--per-language", type=int, default=30, help="graphs per language (the sample's test split)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-wait-ms", type=float, default=20.0)
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 1), help="--cpus-per-replica")
    args = parser.parse_args()
    quiet()
    run = Path(args.run).resolve()
    graphs = graphs_per_language(run, args.per_language)
    print(f"{machine()}; run {run}: {len(graphs)} languages x {args.per_language} graphs")
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        cold, expected = run_generate_commands(run, graphs, Path(tmp))
        warm = run_generate_warm(run, graphs)
        served, outputs, ready, stop = run_server(run, graphs, args, Path(tmp))
    same = sum(a == b for code in graphs for a, b in zip(outputs[code], expected[code]))
    rows = [[s["side"], str(s["n"]), f"{s['wall']:.1f}", f"{s['rate']:.2f}", f"{s['p50']:.2f}", f"{s['p99']:.2f}",
             f"{served['rate'] / s['rate']:.2f}x"] for s in (cold, warm, served)]
    print_table(["side", "sentences", "wall s", "sentences/s", "p50 s", "p99 s", "serve's throughput / this"], rows)
    print(f"serve: ready {ready:.1f} s after start, stopped {stop:.1f} s after SIGTERM; outputs equal to generate's: "
          f"{same}/{sum(len(v) for v in graphs.values())}")


if __name__ == "__main__":
    main()
