"""The deployment files read as what they claim to be (the image itself cannot be built here: no Docker, no
network beyond the package registry): the KubeRay RayJob and the cluster YAML parse, the job's entrypoint is a
`hql-ray train` command line that resolves to the paper's PTHQL config from the image's own files, its head
trains nothing, its cluster is removed when the job ends; the Dockerfile starts from Ray's image of the locked Ray
version for Python 3.11 and installs the lock without resolving anything, then the package."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from hql_ray.cli import build_parser
from hql_ray.commands.train import resolve_config
from hql_ray.settings.config import make_config

REPO = Path(__file__).resolve().parents[1]
RAYJOB = REPO / "deploy" / "kuberay" / "rayjob.yaml"


def locked(name: str) -> str:
    return re.search(rf"^{name}==(\S+)$", (REPO / ".ci" / "requirements.lock").read_text(), re.M).group(1)


def test_every_yaml_manifest_parses():
    for path in [REPO / "cluster.yaml", *sorted((REPO / "deploy").rglob("*.yaml"))]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_the_rayjob_runs_the_pthql_config_on_a_cluster_it_removes(tmp_path, monkeypatch):
    job = yaml.safe_load(RAYJOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == locked("ray")
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # the driver only: GPUs are the workers'
    workers = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert workers["resources"]["limits"]["nvidia.com/gpu"] == "1"
    images = {c["image"] for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]}
    assert len(images) == 1  # the head and the workers run the same image (Ray's versions must agree)

    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["hql-ray", "train", "--config", "configs/pthql.yaml"]
    monkeypatch.chdir(tmp_path)  # not a checkout: the config comes from the installed package, as in the image
    args = build_parser().parse_args(argv[1:])
    cfg = resolve_config(args)
    assert cfg.run_name == "12langs_pthql" and cfg.model.base == "google/mt5-large"
    assert cfg.resources.address == "auto" and cfg.run.storage_path.startswith("s3://")
    assert cfg.run.output_dir == "/mnt/runs" and cfg.data.dir == "/mnt/data"
    assert make_config(REPO / "configs" / "pthql.yaml").tree.levels == cfg.tree.levels
    assert Path(cfg.tree.file).is_file()  # the shipped tree file


def test_the_dockerfile_builds_from_the_lock():
    text = (REPO / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert image == f"rayproject/ray:{locked('ray')}-py311-cu128"
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert "pip install --no-cache-dir --no-deps -r .ci/requirements.lock" in text
    assert "pip install --no-cache-dir --no-deps ." in text
    assert re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M).group(1) == \
        re.search(r"^torch==(\S+)$", (REPO / ".ci" / "constraints.txt").read_text(), re.M).group(1)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "data/*" in ignored and "!data/sample" in ignored  # corpora of one's own never enter an image
