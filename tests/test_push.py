"""hql-ray push on a finished demo-like run (conftest.demo_like_run): the dry run lists what would be uploaded and
its model cards parse with huggingface_hub as the Hub reads them; an upload sends each repository as one commit
(HfApi's calls recorded, never the network); `generate` loads the pushed layout from a folder and from a Hub id
(HF_HUB_OFFLINE, a local Hugging Face cache); the cards' load snippets run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants

from hql_ray.cli import main
from hql_ray.outputs import model_card, publish
from hql_ray.outputs.manifest import read_manifest

PREFIX = "hql-tester/demo"
GRAPHS = "(w / want-01 :ARG0 (g / girl) :ARG1 (s / sing-01 :ARG0 g))\n(c / cat :mod (b / big))\n"


@pytest.fixture(scope="module")
def pushed(demo_like_run, tmp_path_factory) -> Path:
    """`push --dry-run -o DIR`: the repositories' files laid out locally, one per language and one with folders."""
    out = tmp_path_factory.mktemp("pushed")
    assert main(["push", str(demo_like_run), "--repo-prefix", PREFIX, "--dry-run", "-o", str(out)]) == 0
    assert main(["push", str(demo_like_run), "--repo-prefix", PREFIX, "--single-repo", "--dry-run", "-o",
                 str(out), "-q"]) == 0
    return out


def cli(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_lists_the_upload_and_its_cards_parse_with_the_hubs_metadata(demo_like_run, pushed, capsys):
    code, out, _ = cli(["push", str(demo_like_run), "--repo-prefix", PREFIX, "--dry-run"], capsys)
    assert code == 0 and out.rstrip().endswith("dry run: nothing uploaded")
    assert "3 repositories (public)" in out and "card problem" not in out
    for repo in (f"{PREFIX}-base", f"{PREFIX}-deu_Latn", f"{PREFIX}-tpi_Latn"):  # the tiny base exists nowhere else
        assert f"  {repo}  " in out
    for path in ("README.md", "hql_ray_config.yaml", "adapter_model.safetensors", "adapter_config.json",
                 "config.json", "model.safetensors"):
        assert f"    {path} " in out
    manifest = read_manifest(demo_like_run)
    for code_, hub_language in (("deu_Latn", "de"), ("tpi_Latn", "tpi")):  # ISO 639-1 where there is one
        card = ModelCard((pushed / f"{PREFIX}-{code_}" / "README.md").read_text())
        data = card.data
        assert data.language == [hub_language] and data.license == "apache-2.0"
        assert data.pipeline_tag == "text-generation" and data.library_name == "peft"
        assert data.base_model == f"{PREFIX}-base" and data.datasets is None  # the pushed tiny base; synthetic data
        assert {"amr-to-text", "hql-ray", "qlora", "export-adapter"} <= set(data.tags)
        scores = manifest.nodes[f"language.{'German' if code_ == 'deu_Latn' else 'Tok_Pisin'}"].metrics.languages[code_]
        assert set(scores) == {"flores", "amr3"}
        expected = {(name, "chrF++", round(s.chrf, 4)) for name, s in scores.items()} | \
                   {(name, "BLEU (13a)", round(s.bleu_13a, 4)) for name, s in scores.items()}
        got = {(r.dataset_type, r.metric_name, r.metric_value) for r in data.eval_results}
        assert got == expected  # spBLEU and LID were not computed: no result claims them
        assert all(r.dataset_split == "test" and r.task_type == "text-generation" for r in data.eval_results)
        block = data.to_dict()["hql_ray"]
        name = "German" if code_ == "deu_Latn" else "Tok_Pisin"
        assert block["prompt"] == f"Translate to {name}: {{amr}}" and block["language"] == code_
        assert block["compute_dtype"] == "float32" and block["quantization"]["compute_dtype"] == "float32"
        assert "compute auto" not in card.text and "torch.float32" in card.text
        assert f"PeftModel.from_pretrained(base, '{PREFIX}-{code_}')" in card.text
        assert publish.check_card(card.content, [code_]) == []
    base = ModelCard((pushed / f"{PREFIX}-base" / "README.md").read_text()).data
    assert base.library_name == "transformers" and base.license == "apache-2.0"
    one = ModelCard((pushed / PREFIX / "README.md").read_text()).data
    assert one.language == ["de", "tpi"] and len(one.eval_results) == 8 and one.base_model is None
    assert {r.dataset_config for r in one.eval_results} == {"deu_Latn", "tpi_Latn"}


def test_the_run_folders_own_card_is_built_the_same_way(demo_like_run):
    """final/<code>/README.md (written by the run) carries the same metadata, loading from the run folder."""
    text = (demo_like_run / "final" / "deu_Latn" / "README.md").read_text()
    data = ModelCard(text).data
    assert data.language == ["de"] and data.license == "apache-2.0" and len(data.eval_results) == 4
    assert data.base_model is None  # the built-in tiny base: no Hub id
    assert model_card.card_fields(demo_like_run / "final" / "deu_Latn")["prompt"] == "Translate to German: {amr}"
    assert "PeftModel.from_pretrained(base, 'final/deu_Latn')" in text and "compute float32" in text


def test_compute_dtype_and_languages_resolve():
    assert [model_card.hub_language(c) for c in ("deu_Latn", "ltz_Latn", "tpi_Latn", "scn_Latn", "hat_Latn")] == \
        ["de", "lb", "tpi", "scn", "ht"]
    from hql_ray.training.modeling import compute_dtype_name

    assert compute_dtype_name("qlora", "auto", cuda=True) == "bfloat16"
    assert compute_dtype_name("qlora", "auto", cuda=False) == "float32"
    assert compute_dtype_name("fft", "auto", cuda=True) == "float32"
    assert compute_dtype_name("lora", "float16", cuda=False) == "float16"


def test_a_card_the_hub_would_misread_is_reported():
    card = model_card.CardInfo("deu_Latn", "German", "amr2text", "Translate to German: {amr}", ["language.German"],
                               "stack", "lora", "google/mt5-large", "google/mt5-large", "r", None, 8, ["q"], "data",
                               corpora=["amr3", "flores"])
    text = model_card.card_text(card)
    assert publish.check_card(text, ["deu_Latn"]) == []
    data = ModelCard(text).data
    assert data.base_model == "google/mt5-large" and data.datasets == ["facebook/flores"]
    assert publish.check_card(text.replace("license: apache-2.0\n", ""), ["deu_Latn"]) == \
        ["license None instead of 'apache-2.0'"]
    assert publish.check_card(text, ["nld_Latn"]) == ["language ['de'] instead of ['nl']"]


class RecordingApi:
    """HfApi's two upload calls, recorded (what push would send); nothing reaches the network."""

    def __init__(self):
        self.repos, self.commits = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        self.commits.append((repo_id, {op.path_in_repo: op.path_or_fileobj for op in operations}, kwargs))


@pytest.fixture
def recording_api(monkeypatch) -> RecordingApi:
    api = RecordingApi()
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: api.create_repo(repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw:
                        api.create_commit(repo_id, operations, **kw))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return api


def test_push_sends_each_repository_as_one_commit(demo_like_run, recording_api, capsys):
    code, out, _ = cli(["push", str(demo_like_run), "--repo-prefix", PREFIX, "--private", "--langs", "German"], capsys)
    assert code == 0 and f"pushed https://huggingface.co/{PREFIX}-deu_Latn" in out
    settings = {"private": True, "exist_ok": True, "repo_type": "model"}
    assert recording_api.repos == [(f"{PREFIX}-base", settings), (f"{PREFIX}-deu_Latn", settings)]
    (base_repo, base_files, _), (repo, files, kwargs) = recording_api.commits
    assert kwargs["commit_message"] == "hql-ray push of run demo_like"
    final = demo_like_run / "final" / "deu_Latn"
    assert Path(files["adapter_model.safetensors"]).read_bytes() == (final / "adapter_model.safetensors").read_bytes()
    assert ModelCard(files["README.md"].decode()).data.language == ["de"]
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == base_repo  # not this machine's
    assert set(files) == {"README.md", "hql_ray_config.yaml", "adapter_config.json", "adapter_model.safetensors"}
    assert {"config.json", "model.safetensors", "README.md"} <= set(base_files)

    code, out, _ = cli(["push", str(demo_like_run), "--repo-prefix", PREFIX, "--single-repo", "-q"], capsys)
    assert code == 0 and out.strip() == f"pushed https://huggingface.co/{PREFIX}"
    repo, files, _ = recording_api.commits[-1]
    assert repo == PREFIX and {"README.md", "deu_Latn/README.md", "tpi_Latn/adapter_model.safetensors",
                               "base/model.safetensors"} <= set(files)
    assert "adapter_config.json" not in files  # the root is no adapter (transformers would take it for one)


def test_push_refuses_offline_or_logged_out_and_bad_names(demo_like_run, recording_api, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli(["push", str(demo_like_run), "--repo-prefix", PREFIX, "-q"], capsys)
    assert code == 2 and "HF_HUB_OFFLINE is set: nothing can be uploaded" in err
    code, _, err = cli(["push", str(demo_like_run), "--repo-prefix", "no-owner", "--dry-run"], capsys)
    assert code == 2 and "--repo-prefix 'no-owner'" in err
    assert recording_api.repos == [] and recording_api.commits == []


def generated(ref: str, lang: str, graphs: Path, capsys) -> list[str]:
    code, out, err = cli(["generate", ref, "--lang", lang, str(graphs), "-q"], capsys)
    assert code == 0, err
    return out.splitlines()


def hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """`folder` as the Hugging Face cache holds a downloaded repository (refs/main -> snapshots/<commit>/)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_generate_loads_the_pushed_layout_from_a_folder_and_from_a_hub_id(demo_like_run, pushed, tmp_path,
                                                                          monkeypatch, capsys):
    graphs = tmp_path / "graphs.txt"
    graphs.write_text(GRAPHS)
    from_run = generated(str(demo_like_run), "deu_Latn", graphs, capsys)
    assert len(from_run) == 2
    assert generated(str(pushed / f"{PREFIX}-deu_Latn"), "German", graphs, capsys) == from_run
    assert generated(str(pushed / PREFIX), "deu_Latn", graphs, capsys) == from_run  # --single-repo's folders
    cache = tmp_path / "hub"
    for repo in (f"{PREFIX}-deu_Latn", f"{PREFIX}-base"):
        hub_cache(cache, repo, pushed / repo)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE  # conftest: the cache only
    assert generated(f"hf://{PREFIX}-deu_Latn", "deu_Latn", graphs, capsys) == from_run
    assert generated(f"{PREFIX}-deu_Latn", "German", graphs, capsys) == from_run
    code, _, err = cli(["generate", "hf://hql-tester/nothing-here", "--lang", "deu_Latn", str(graphs)], capsys)
    assert code == 2 and "hql-tester/nothing-here is not in the local Hugging Face cache" in err
    code, _, err = cli(["generate", "no-such/run", "--lang", "deu_Latn", str(graphs)], capsys)  # a typo, or an id
    assert code == 2 and "no folder no-such/run here, and as a Hub id: no-such/run is not in the local" in err


def test_the_cards_load_snippets_run(demo_like_run, pushed, tmp_path):
    """The Python of 'Load it' runs as written: the run folder's card from the run folder, the pushed card against
    the Hub id (offline, from a local Hugging Face cache)."""
    cache = tmp_path / "hub"
    for repo in (f"{PREFIX}-tpi_Latn", f"{PREFIX}-base", PREFIX):
        hub_cache(cache, repo, pushed / repo)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    for card, cwd in ((demo_like_run / "final" / "tpi_Latn" / "README.md", demo_like_run),
                      (pushed / f"{PREFIX}-tpi_Latn" / "README.md", tmp_path),
                      (pushed / PREFIX / "README.md", tmp_path)):  # --single-repo: a folder per language
        text = card.read_text()
        snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
        done = subprocess.run([sys.executable, "-c", snippet], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("\n") == 1  # the one decoded line its print writes (the random tiny model's)
