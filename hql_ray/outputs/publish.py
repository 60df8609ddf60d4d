"""`hql-ray push`'s plan and upload: a finished run's language models as Hugging Face Hub repositories.

The plan (`plan_push`) says, per repository, every file it would hold (`RepoFile`: a file of the run, or text made
here: the model card, the run's config) in the layout `outputs.hub_layout` reads back; `check_card` validates each
card as `huggingface_hub` parses it. `write_plan` lays the repositories out in a local folder (what the Hub would
hold, for a look or a test), `upload` sends each as one commit through `HfApi`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.outputs import hub_layout, model_card
from hql_ray.outputs.manifest import Manifest, read_manifest, run_tree
from hql_ray.outputs.run_files import config_yaml
from hql_ray.settings.config import TINY_BASES, Config
from hql_ray.settings.errors import InputError
from hql_ray.settings.tree import LanguageTree

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class RepoFile:
    """One file of a repository: `source` (a file of the run) or `text` (made by push)."""

    path: str
    source: Path | None = None
    text: str | None = None

    @property
    def size(self) -> int:
        return self.source.stat().st_size if self.source is not None else len(self.text.encode("utf-8"))

    def content(self) -> Path | bytes:
        return self.source if self.source is not None else self.text.encode("utf-8")


@dataclass
class RepoPlan:
    repo_id: str
    languages: list[str]
    files: list[RepoFile] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> RepoFile:
        return next(f for f in self.files if f.path == path)


@dataclass
class PushPlan:
    run_dir: Path
    repos: list[RepoPlan]
    skipped: dict[str, str] = field(default_factory=dict)  # code -> why it is not pushed
    notes: list[str] = field(default_factory=list)


@dataclass
class FinishedRun:
    """What a push reads of a run: its record, tree and config, and whether its workers computed on CUDA."""

    manifest: Manifest
    tree: LanguageTree
    cfg: Config

    @classmethod
    def read(cls, run_dir: str | Path) -> "FinishedRun":
        manifest = read_manifest(run_dir)
        return cls(manifest, run_tree(manifest)[0], manifest.config)

    @property
    def run_dir(self) -> Path:
        return self.manifest.path.parent

    def card(self, code: str, place: model_card.CardPlace) -> model_card.CardInfo:
        leaf = self.tree.leaf_for(code).id
        record = self.manifest.nodes[leaf]
        info = model_card.card_info(self.cfg, self.tree, leaf, code, self.run_dir / "final" / code, record.metrics,
                                    record.exports.get(code), cuda=model_card.ran_on_cuda(self.manifest))
        info.place = place
        return info


def check_prefix(prefix: str, single_repo: bool) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(prefix if single_repo else f"{prefix}-x")
    except HFValidationError as err:
        raise InputError(f"--repo-prefix {prefix!r} is not OWNER/NAME: {err}") from None
    if prefix.count("/") != 1:
        raise InputError(f"--repo-prefix {prefix!r} must be OWNER/NAME (your user or organization, then a name)")


def plan_push(run_dir: str | Path, prefix: str, *, single_repo: bool = False,
              languages: list[str] | None = None) -> PushPlan:
    """What `hql-ray push` would upload: one repository per exported language (`prefix-<code>`), or one (`prefix`)
    with a folder per language."""
    check_prefix(prefix, single_repo)
    run = FinishedRun.read(run_dir)
    plan = PushPlan(run.run_dir, [])
    codes = _codes(run, languages, plan)
    if not codes:
        raise InputError("no language of this run has an export under final/ to push (is the run finished?)",
                         path=run.run_dir / "final")
    base_files = _base_files(run, plan)
    plan.repos = (_one_repo if single_repo else _repo_per_language)(run, prefix, codes, base_files)
    return plan


def _one_repo(run: FinishedRun, prefix: str, codes: list[str], base_files: list[tuple[str, Path]]) -> list[RepoPlan]:
    """One repository, a folder per language, the base (if pushed) in `base/`: the root holds no adapter, which
    transformers would take the repository for."""
    base = (prefix, hub_layout.BASE_DIR) if base_files else (None, None)
    repo = RepoPlan(prefix, codes)
    for code in codes:
        repo.files += _language_files(run, code, model_card.CardPlace(prefix, code, *base))
    repo.files += [RepoFile(f"{hub_layout.BASE_DIR}/{path}", source=source) for path, source in base_files]
    repo.files.append(RepoFile(model_card.CARD, text=index_card(run, prefix, codes, base if base_files else None)))
    return [repo]


def _repo_per_language(run: FinishedRun, prefix: str, codes: list[str],
                       base_files: list[tuple[str, Path]]) -> list[RepoPlan]:
    """A repository per language (`prefix-<code>`); a pushed base is one of its own (`prefix-base`), which the
    adapters name as their base."""
    repos = []
    base_repo = f"{prefix}-{hub_layout.BASE_DIR}" if base_files else None
    if base_repo:
        repos.append(RepoPlan(base_repo, [], [RepoFile(path, source=source) for path, source in base_files]
                              + [RepoFile(model_card.CARD, text=base_card(run, base_repo))]))
    for code in codes:
        repo_id = f"{prefix}-{code}"
        repos.append(RepoPlan(repo_id, [code], _language_files(run, code, model_card.CardPlace(repo_id, None,
                                                                                               base_repo))))
    return repos


def _codes(run: FinishedRun, wanted: list[str] | None, plan: PushPlan) -> list[str]:
    """The languages to push (those asked for, else all), in the tree's order; the others' reasons in the plan."""
    from hql_ray.outputs.generate import resolve_language

    asked = {resolve_language(run.tree.languages, lang, run.run_dir).code for lang in wanted} if wanted else None
    codes = []
    for lang in run.tree.languages:
        if asked is not None and lang.code not in asked:
            continue
        leaf = run.tree.leaf_for(lang.code).id
        status = run.manifest.nodes[leaf].status if leaf in run.manifest.nodes else "not in the run"
        if (run.run_dir / "final" / lang.code).is_dir():
            codes.append(lang.code)
        else:
            plan.skipped[lang.code] = f"no export under final/: its leaf {leaf} is {status}"
    return codes


def _base_files(run: FinishedRun, plan: PushPlan) -> list[tuple[str, Path]]:
    """A built-in tiny base exists only on this machine: it is pushed too (with its tokenizer), as (path, file)
    pairs. A base from a local folder is named, not pushed (it may be large: push it yourself)."""
    from hql_ray.training import modeling

    base = run.cfg.model.base
    if base not in TINY_BASES:
        if Path(base).expanduser().is_dir():
            plan.notes.append(f"the base model is a local folder ({base}): the cards name it, but it is not pushed")
        return []
    folder = Path(modeling.base_model_path(run.cfg))
    return [(p.relative_to(folder).as_posix(), p) for p in sorted(folder.rglob("*")) if p.is_file()]


def _language_files(run: FinishedRun, code: str, place: model_card.CardPlace) -> list[RepoFile]:
    """final/<code>/ as the repository holds it (in `place.subfolder`, if any): the export's files, a card for the
    Hub, the run's config; the adapter names the pushed base, when there is one, not this machine's folder."""
    source = run.run_dir / "final" / code
    folder = f"{place.subfolder}/" if place.subfolder else ""
    files = [RepoFile(folder + model_card.CARD, text=model_card.card_text(run.card(code, place))),
             RepoFile(folder + hub_layout.CONFIG_FILE, text=config_yaml(run.cfg))]
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.name != model_card.CARD):
        rel = folder + path.relative_to(source).as_posix()
        if path.name == ADAPTER_CONFIG and place.base:
            config = json.loads(path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = place.base if not place.base_subfolder else run.cfg.model.base
            files.append(RepoFile(rel, text=json.dumps(config, indent=2) + "\n"))
        else:
            files.append(RepoFile(rel, source=path))
    return files


def base_card(run: FinishedRun, repo_id: str) -> str:
    """The card of a pushed tiny base: what it is, and which repositories are adapters over it."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="transformers", license=model_card.LICENSE, pipeline_tag=model_card.PIPELINE_TAG,
                         tags=["hql-ray", "tiny-base"], hql_ray={"base_of_run": run.cfg.run_name,
                                                                 "base_model": run.cfg.model.base})
    return "\n".join(["---", data.to_yaml(), "---", "", f"# `{run.cfg.run_name}`'s base: hql-ray's `{run.cfg.model.base}`",
                      "", "A few-hundred-thousand-parameter mT5 built by hql-ray (its demo's base, with its tokenizer), "
                      "which exists nowhere else: the language repositories of this run are adapters over it "
                      f"(their `base_model`). Not a model for real use.", ""])


def index_card(run: FinishedRun, repo_id: str, codes: list[str], base: tuple[str, str] | None) -> str:
    """The card of a one-repository push: every language's metadata and scores, a folder each."""
    infos = [run.card(code, model_card.CardPlace(repo_id, code, *(base or (None, None)))) for code in codes]
    data = model_card.card_data(infos[0])
    data.language = sorted({model_card.hub_language(code) for code in codes})
    results = []
    for info in infos:
        for result in model_card.eval_results(info):
            result.dataset_config = info.code  # one language's test set
            results.append(result)
    data.eval_results = results or None
    data.model_name = f"hql-ray {run.cfg.run_name}" if results else None
    data.hql_ray = {"languages": {i.code: i.language for i in infos}, "layout": "a folder per language",
                    "direction": infos[0].direction, "base_model": infos[0].base_model}
    lines = ["---", data.to_yaml(), "---", "", f"# hql-ray run `{run.cfg.run_name}`: {len(codes)} language(s)", "",
             "One model per language, trained down a language tree with hierarchical QLoRA (Soto Martinez, Parmentier "
             "and Gardent, INLG 2024). Each folder holds one language's model and its own card (prompt, scores, "
             "how to load it).", "", "| folder | language | prompt |", "|---|---|---|"]
    lines += [f"| [{i.code}/]({i.code}/README.md) | {i.language} | `{i.prompt}` |" for i in infos]
    lines += ["", "## Load one", "", "```python", *model_card.load_lines(infos[0]), "```", ""]
    return "\n".join(lines)


def check_card(text: str, languages: list[str]) -> list[str]:
    """Problems with a card as `huggingface_hub` parses it (the metadata the Hub indexes), [] when it is sound."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(text).data
    except Exception as err:  # noqa: BLE001 - any parse failure is the problem to report
        return [f"huggingface_hub cannot parse it: {err}"]
    problems = []
    want = sorted({model_card.hub_language(code) for code in languages})
    if sorted(data.language or []) != want:
        problems.append(f"language {data.language} instead of {want}")
    for key, value in (("license", model_card.LICENSE), ("pipeline_tag", model_card.PIPELINE_TAG)):
        if getattr(data, key) != value:
            problems.append(f"{key} {getattr(data, key)!r} instead of {value!r}")
    if data.library_name not in ("peft", "transformers"):
        problems.append(f"library_name {data.library_name!r}")
    block = data.to_dict().get("hql_ray") or {}
    if languages and not (block.get("prompt") or block.get("languages")):
        problems.append("no hql_ray block (the prompt `hql-ray generate` reads)")
    if any(r.metric_value is None for r in data.eval_results or []):
        problems.append("an eval result without a value")
    return problems


def write_plan(plan: PushPlan, out_dir: str | Path) -> list[Path]:
    """Each repository's files under out_dir/<owner>/<name>/, as the Hub would hold them; -> the folders."""
    folders = []
    for repo in plan.repos:
        folder = Path(out_dir) / repo.repo_id
        if folder.exists():
            shutil.rmtree(folder)
        for f in repo.files:
            target = folder / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.source is not None:
                shutil.copyfile(f.source, target)
            else:
                target.write_text(f.text, encoding="utf-8")
        folders.append(folder)
    return folders


def upload(plan: PushPlan, api, *, private: bool, message: str) -> list[str]:
    """Each repository created (or reused) and its files sent as one commit; -> the repositories' URLs."""
    from huggingface_hub import CommitOperationAdd

    urls = []
    for repo in plan.repos:
        url = api.create_repo(repo.repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo.repo_id, repo_type="model", commit_message=message,
                          operations=[CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=f.content())
                                      for f in repo.files])
        urls.append(str(url))
    return urls
