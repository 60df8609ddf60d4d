"""A language model as `hql-ray push` lays it out on the Hugging Face Hub, read back by `hql-ray generate` (and
`serve`) from a Hub id or from a local folder of that layout.

One repository per language holds at its root what the run's `final/<code>/` holds (the PEFT adapter, or the whole
model), its model card (`README.md`, with the `hql_ray` block) and the run's resolved config (`hql_ray_config.yaml`:
the linearization, the prompt's max length, the base and how it was quantized). With `push --single-repo`, one
repository holds a folder per language, each laid out that way. A run on one of the built-in tiny bases ships the
base too (with its tokenizer: it exists nowhere else), as a repository of its own (`OWNER/NAME-base`, which the
adapters name as their base) or, with --single-repo, as the folder `base/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hql_ray.outputs.model_card import CARD, card_fields
from hql_ray.settings.config import Config
from hql_ray.settings.errors import InputError

CONFIG_FILE = "hql_ray_config.yaml"
BASE_DIR = "base"
HF_SCHEME = "hf://"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def hub_id(ref: str) -> str | None:
    """`hf://owner/name`, or `owner/name` when no such local path exists -> `owner/name`; anything else None."""
    ref = str(ref)
    if ref.startswith(HF_SCHEME):
        repo = ref[len(HF_SCHEME):].strip("/")
        if not REPO_ID.match(repo):
            raise InputError(f"{ref!r} is not a Hub model id (hf://OWNER/NAME)")
        return repo
    return ref if REPO_ID.match(ref) and not Path(ref).exists() else None


def download(repo_id: str) -> Path:
    """The repository's files, from the local Hugging Face cache or the Hub (only the cache with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id))
    except RepositoryNotFoundError:
        raise InputError(f"no model repository {repo_id} on the Hub (or it is private: log in with `hf auth login`)") \
            from None
    except LocalEntryNotFoundError:
        raise InputError(f"{repo_id} is not in the local Hugging Face cache, and the Hub cannot be reached "
                         "(HF_HUB_OFFLINE is set, or no network)") from None
    except HfHubHTTPError as err:
        raise InputError(f"{repo_id}: the Hub answered {err}") from None


def is_pushed(folder: str | Path) -> bool:
    """A folder in push's layout: one language at its root, or a folder per language."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() or any((d / CONFIG_FILE).is_file() for d in _subfolders(folder))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and d.name != BASE_DIR) if folder.is_dir() else []


@dataclass
class PushedModel:
    """One language of a pushed repository: its folder, its card's fields, the run's config."""

    root: Path
    model_dir: Path
    code: str
    name: str
    fields: dict
    cfg: Config


def pushed_languages(root: str | Path) -> list[PushedModel]:
    """Every language of a pushed repository (its root, or its folders), in folder order."""
    root = Path(root)
    dirs = [root] if (root / CONFIG_FILE).is_file() else [d for d in _subfolders(root) if (d / CONFIG_FILE).is_file()]
    return [_read(root, d) for d in dirs]


def pushed_base(root: Path, fields: dict) -> str | None:
    """Where a pushed base is (the tiny ones, which exist nowhere else), as the card's block says: a folder of this
    repository, or a repository of its own; a local copy of that repository beside this one (push -o) first."""
    repo, folder = fields.get("base_repo"), fields.get("base_subfolder")
    if not repo:
        return None
    if folder:
        return str(root / folder)
    sibling = root.parent / repo.split("/")[-1]
    return str(sibling) if (sibling / "config.json").is_file() else repo


def _read(root: Path, model_dir: Path) -> PushedModel:
    fields = card_fields(model_dir)
    if not fields.get("language"):
        raise InputError(f"no {CARD} with an hql_ray block (its language, prompt): not a model hql-ray pushed",
                         path=model_dir)
    path = model_dir / CONFIG_FILE
    try:
        cfg = Config.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))
    except yaml.YAMLError as err:
        raise InputError(f"invalid YAML: {err}", path=path) from None
    cfg.model.base = pushed_base(root, fields) or cfg.model.base
    return PushedModel(root, model_dir, fields["language"], fields.get("language_name") or fields["language"],
                       fields, cfg)
