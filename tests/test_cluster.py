"""A real multi-node Ray cluster on loopback: `ray start` head + 2 GPU worker nodes (logical GPUs), a run
submitted with `ray job submit --working-dir`, and one worker node killed while a tree node trains on it.

Every node is `ray start --block` in its own process group and temp dir, on free ports (never 6379/8265),
so the test can kill exactly one node and clean up exactly what it started, even when it fails: it never
runs `ray stop`, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import REPO, tiny_overrides

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))


def dashboard_missing() -> str | None:
    """The job server lives in the dashboard, which needs `ray[default]` (aiohttp, grpcio, ...)."""
    from ray._private.utils import get_dashboard_dependency_error

    err = get_dashboard_dependency_error()
    return None if err is None else f"ray job submit needs the dashboard: pip install 'ray[default]' ({err})"


NO_DASHBOARD = dashboard_missing()
TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # the token every node and client of the cluster uses
TWO_LANGUAGES = "code,level0,language\ndeu_Latn,Germanic,German\nnld_Latn,Germanic,Dutch\n"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_port_range(size: int = 60) -> tuple[int, int]:
    """A run of ports nobody listens on now (workers of this node bind them)."""
    for base in range(21000 + os.getpid() % 200 * 150, 60000, 150):
        try:
            for port in (base, base + size // 2, base + size - 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base, base + size - 1
        except OSError:
            continue
    raise RuntimeError("no free port range")


class LocalCluster:
    """Head + worker nodes, each a `ray start --block` process group with its own temp dir."""

    def __init__(self, root: Path, env: dict):
        self.root = root
        self.env = env
        self.nodes: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()  # nodes the test took down on purpose
        self.gcs_port = self.dashboard_port = None

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"r{name}", dir="/tmp"))  # short: unix socket paths
        low, high = free_port_range()
        node_manager, object_manager, metrics, agent_http, agent_grpc, runtime_env = free_ports(6)
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
               "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
               "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent_http),
               "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
               "--min-worker-port", str(low), "--max-worker-port", str(high),
               "--object-store-memory", str(150 * 1024 * 1024), "--disable-usage-stats", *args]
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.temp_dir = temp_dir  # type: ignore[attr-defined]
        self.nodes[name] = proc
        return proc

    def start_head(self, num_cpus: int, dashboard: bool) -> None:
        self.gcs_port, self.dashboard_port = free_ports(2)
        extra = (["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                  str(self.dashboard_port)] if dashboard else ["--include-dashboard", "false"])
        self._start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus), "--num-gpus", "0",
                             *extra])
        self.wait_for(self._dashboard_up if dashboard else self._gcs_up, "the head")

    def add_worker(self, num_cpus: int, num_gpus: int) -> str:
        name = f"worker{len(self.nodes)}"
        self._start(name, ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(num_cpus),
                           "--num-gpus", str(num_gpus)])
        return name

    def live_workers(self) -> list[str]:
        return [n for n, p in self.nodes.items() if n != "head" and p.poll() is None]

    def ensure_workers(self, count: int, num_gpus: int = 2) -> None:
        """Two GPU worker nodes for each scenario: one to lose, one to carry on."""
        while len(self.live_workers()) < count:
            self.add_worker(num_cpus=2, num_gpus=num_gpus)
        want = 1 + len(self.live_workers())
        self.wait_for(lambda: self.alive_nodes() == want, f"{want} alive nodes")

    def _gcs_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.gcs_port), timeout=2):
                return True
        except OSError:
            return False

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def get(self, path: str, token: bool = True) -> tuple[int, str]:
        """GET on the dashboard; with token auth on, it answers 401 unless the request carries the token."""
        headers = {"Authorization": f"Bearer {TOKEN_FILE.read_text().strip()}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.dashboard}{path}", headers=headers),
                                        timeout=10) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def _dashboard_up(self) -> bool:
        try:
            self.get("/api/version", token=False)  # any HTTP answer: the server is up
            return True
        except OSError:
            return False

    def alive_nodes(self) -> int:
        out = subprocess.run([sys.executable, "-c", (
            "import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))") % self.gcs_port],
            env=self.env, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1

    def wait_for(self, check, what: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if check():
                return
            for name, proc in self.nodes.items():
                if proc.poll() is not None and name not in self.killed:
                    raise RuntimeError(f"ray node {name} exited: {(self.root / f'{name}.log').read_text()[-3000:]}")
            time.sleep(1)
        raise TimeoutError(f"waiting for {what}")

    def processes(self, name: str) -> list[psutil.Process]:
        """Every process of that node: raylet, agents and workers all stay in the session of its `ray start`
        (workers get process groups of their own, so a process-group kill would miss them)."""
        sid = self.nodes[name].pid
        found = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) == sid:
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def hosts(self, name: str, title: str) -> bool:
        """Whether a process of that node has this Ray title (`ray::RayTrainWorker...`, `ray::RunBoard`)."""
        for proc in self.processes(name):
            try:
                if " ".join(proc.cmdline()).startswith(title):
                    return True
            except psutil.Error:
                continue
        return False

    def hosts_train_worker(self, name: str) -> bool:
        return self.hosts(name, "ray::RayTrainWorker")

    def _kill_all(self, name: str) -> None:
        for proc in self.processes(name):
            try:
                proc.kill()
            except psutil.Error:
                pass

    def kill(self, name: str) -> None:
        """The machine is gone: SIGKILL every process of the node at once, no goodbye to the head."""
        self.killed.add(name)
        self._kill_all(name)
        self.nodes[name].wait(timeout=30)

    def shutdown(self) -> None:
        for proc in reversed(list(self.nodes.values())):
            if proc.poll() is None:
                proc.terminate()  # `ray start --block` stops its node's processes
        deadline = time.time() + 30
        for name, proc in self.nodes.items():
            try:
                proc.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            self._kill_all(name)  # whatever is left of that node (its session)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="600",
               PYTHONUNBUFFERED="1",
               # Every node and client of a multi-node cluster must agree: token auth, ~/.ray/auth_token.
               RAY_AUTH_MODE="token")
    c = LocalCluster(root, env)
    try:
        c.start_head(num_cpus=2, dashboard=NO_DASHBOARD is None)
        c.ensure_workers(2)
        yield c
    finally:
        c.shutdown()


def test_multi_node_run_refuses_a_local_only_storage_path(cluster, small_corpus, tmp_path):
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    cluster.ensure_workers(2)
    overrides = tiny_overrides(tmp_path, small_corpus, tree, **{"run.name": "local", "tree.levels": "[level0]"})
    out = subprocess.run([sys.executable, "-m", "hql_ray", "train", "--plain", "--address",
                          f"127.0.0.1:{cluster.gcs_port}", *overrides], cwd=REPO, env=cluster.env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert (f"this Ray cluster has 3 nodes but run.storage_path is the local folder {tmp_path}/local/storage; "
            "set run.storage_path to a URI every node can reach (s3://bucket/path) or to a shared NFS mount") \
        in out.stderr


def lose_the_training_worker_node(cluster, launch: list[str], tmp_path: Path, run_name: str) -> tuple[str, str, float]:
    """Start a run, kill the worker node that trains the root once the root has checkpointed, wait for the end."""
    cluster.ensure_workers(2)
    proc = subprocess.Popen(launch, cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    storage = tmp_path / "shared-storage"
    killed, killed_at = None, 0.0
    try:
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            if len(list(storage.glob("level0.Germanic.train.*/checkpoint_*"))) >= 2:  # the 1st is registered
                killed = next((n for n in cluster.live_workers() if cluster.hosts_train_worker(n)), None)
                if killed:
                    # The run's board (attempt counts, progress) lives with the driver, not on a worker machine.
                    assert cluster.hosts(killed, "ray::RunBoard") is False and cluster.hosts("head", "ray::RunBoard")
                    cluster.kill(killed)
                    killed_at = time.time()
                    break
            time.sleep(0.2)
        output = proc.communicate(timeout=max(60, deadline - time.time()))[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (tmp_path / f"{run_name}.log").write_text(output)
    assert killed is not None, output[-5000:]
    assert proc.returncode == 0, output[-5000:]
    return killed, output, killed_at


def run_overrides(tmp_path: Path, corpus: Path, run_name: str) -> list[str]:
    tree = tmp_path / "two.csv"
    tree.write_text(TWO_LANGUAGES)
    return ["--storage-path", str(tmp_path / "shared-storage"),  # every "machine" here sees /tmp: our NFS
            *tiny_overrides(tmp_path, corpus, tree, **{
                "run.name": run_name, "tree.levels": "[level0, language]", "resources.max_failures": 2,
                "resources.min_examples_per_worker": 1000, "train.epochs": 10, "train.max_steps": 80,
                "train.eval_every": 5, "eval.generate": "false"})]


def check_recovered_run(run_dir: Path, output: str, killed_at: float) -> None:
    from hql_ray.training.adapter_files import load_adapter_state, state_checksum

    manifest = json.loads((run_dir / "manifest.json").read_text())
    nodes = manifest["nodes"]
    assert manifest["status"] == "done" and {v["status"] for v in nodes.values()} == {"done"}
    root = nodes["level0.Germanic"]
    # The root was training on the lost machine: retried from its checkpoint on the surviving one.
    assert root["started_at"] < killed_at < root["finished_at"]
    assert root["attempts"] >= 2 and root["metrics"]["resumed_from_step"] >= 5
    for node_id, entry in nodes.items():
        # Done once: its adapter on disk is the one the manifest names, and its children got exactly that.
        saved = load_adapter_state(run_dir / entry["adapter"])
        assert state_checksum(saved) == entry["checksum"]
        assert output.count(f"{node_id}: done (") == 1 and output.count(f"{node_id}: started on") == 1
        for child in entry["children"]:
            assert nodes[child]["started_at"] >= entry["finished_at"]
            assert nodes[child]["received_checksums"] == [entry["checksum"]]
            assert nodes[child]["attempts"] == 1


def test_driver_on_the_head_survives_losing_the_worker_node_that_trains(cluster, small_corpus, tmp_path):
    """`hql-ray train --address <head>` (what `ray submit` / `ray exec` run on the head)."""
    launch = [sys.executable, "-m", "hql_ray", "train", "--plain", "--address", f"127.0.0.1:{cluster.gcs_port}",
              *run_overrides(tmp_path, small_corpus, "direct")]
    killed, output, killed_at = lose_the_training_worker_node(cluster, launch, tmp_path, "direct")
    check_recovered_run(tmp_path / "direct", output, killed_at)
    assert killed not in cluster.live_workers()


@pytest.mark.skipif(NO_DASHBOARD is not None, reason=NO_DASHBOARD or "")
def test_submitted_job_survives_losing_the_worker_node_that_trains(cluster, small_corpus, tmp_path):
    """`ray job submit --working-dir <repo> -- python -m hql_ray train --address auto ...`."""
    status, _ = cluster.get("/api/version", token=False)
    assert status == 401  # token auth on: the job server refuses anonymous callers
    status, body = cluster.get("/api/version")
    assert status == 200 and json.loads(body)["ray_version"]
    launch = [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", str(REPO), "--",
              "python", "-m", "hql_ray", "train", "--plain", "--address", "auto",
              *run_overrides(tmp_path, small_corpus, "job")]
    killed, output, killed_at = lose_the_training_worker_node(cluster, launch, tmp_path, "job")
    assert "Job 'raysubmit_" in output and "succeeded" in output
    check_recovered_run(tmp_path / "job", output, killed_at)


def test_a_new_head_continues_the_run_of_a_lost_one(small_corpus, tmp_path):
    """The head machine is lost with the driver on it (kill -9 of the driver and of every Ray process), a new
    cluster comes up, and `hql-ray train ... --resume --address <new head>` with the same storage continues:
    the node that was training goes on from its newest checkpoint in the shared storage."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token")
    overrides = run_overrides(tmp_path, small_corpus, "moved")
    storage = tmp_path / "shared-storage"
    first = LocalCluster(tmp_path / "first", env)
    (tmp_path / "first").mkdir()
    try:
        first.start_head(num_cpus=2, dashboard=False)
        first.ensure_workers(1)
        proc = subprocess.Popen([sys.executable, "-m", "hql_ray", "train", "--plain", "--address",
                                 f"127.0.0.1:{first.gcs_port}", *overrides], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None:
            if len(list(storage.glob("level0.Germanic.train.*/checkpoint_*"))) >= 2:  # the 1st is registered
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, without a word
        output = proc.communicate(timeout=60)[0]
        assert list(storage.glob("level0.Germanic.train.*/checkpoint_*")), output[-5000:]
        for name in list(first.nodes):  # then the machines: every Ray process of the old cluster
            first.kill(name)
    finally:
        first.shutdown()
    second = LocalCluster(tmp_path / "second", env)
    (tmp_path / "second").mkdir()
    try:
        second.start_head(num_cpus=2, dashboard=False)
        second.ensure_workers(1)
        out = subprocess.run([sys.executable, "-m", "hql_ray", "train", "--plain", "--resume", "--address",
                              f"127.0.0.1:{second.gcs_port}", *overrides], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1200)
    finally:
        second.shutdown()
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    manifest = json.loads((tmp_path / "moved" / "manifest.json").read_text())
    root = manifest["nodes"]["level0.Germanic"]
    assert manifest["status"] == "done" and {v["status"] for v in manifest["nodes"].values()} == {"done"}
    assert root["metrics"]["resumed_from_step"] >= 5 and root["metrics"]["resumed_from_step"] % 5 == 0
    assert "level0.Germanic: resumed at step" in out.stdout
