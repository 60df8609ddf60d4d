"""The evaluation's two model files, fetched once by `hql-ray fetch-eval-models` into the places runs read them.

- spBLEU: sacreBLEU's flores200 SentencePiece model, from sacreBLEU's own URL into sacreBLEU's cache folder
  (`metrics.sacrebleu_spm_path`, honouring $SACREBLEU): where spBLEU looks when eval.spbleu_model is not set.
- LID: GlotLID (`metrics.GLOTLID`, cis-lmu/glotlid model.bin, 1.6 GB) through huggingface_hub into the
  Hugging Face cache: the LID model of every run that sets no eval.lid_model (`metrics.effective_lid_model`).

Runs never download (each evaluating machine reads its own caches); this is the one place that does. The
downloads go through `download_url` and `hf_download`, which tests replace with local copies.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hql_ray.scoring import metrics
from hql_ray.settings.errors import InputError

SPBLEU_URL = metrics.tokenizer_spm.SPM_MODELS["flores200"]["url"]
TIMEOUT_S = 60.0


@dataclass
class Fetched:
    """One model file: what it is for, where it is, and whether this call downloaded it."""

    metric: str
    path: Path
    downloaded: bool
    source: str
    name: str = ""  # how signatures will name it (spBLEU: flores200, or spm-vocab<N> for another model)


def download_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """`url` into `dest`, atomically (a partial download never sits where sacreBLEU would load it)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hf_download(repo_id: str, filename: str, revision: str | None) -> str:
    """huggingface_hub's download into its cache (the path of the cached file)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)


def fetch_spbleu_model(force: bool = False) -> Fetched:
    """sacreBLEU's flores200 SentencePiece model in sacreBLEU's cache (downloaded unless there already), checked
    to load. InputError, saying what to do, when it cannot be had."""
    path = metrics.sacrebleu_spm_path()
    downloaded = False
    if force or not path.is_file():
        try:
            download_url(SPBLEU_URL, path)
        except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP error, a read-only cache folder
            raise InputError(f"cannot download the flores200 SentencePiece model from {SPBLEU_URL} "
                             f"({type(exc).__name__}: {exc}); without a network here, download it elsewhere and "
                             f"copy it to {path}, or give its path as eval.spbleu_model (hql-ray evaluate "
                             "--spbleu-model)", path=path) from None
        downloaded = True
    try:
        name = metrics.spm_model_name(path)  # flores200 for the real one (256,000 pieces)
    except metrics.NotComputed as exc:
        raise InputError(f"{exc.reason}: delete it and fetch again", path=path) from None
    return Fetched("spBLEU", path, downloaded, SPBLEU_URL, name)


def fetch_lid_model(spec: str = metrics.GLOTLID, force: bool = False) -> Fetched:
    """The fastText LID model of an hf://owner/repo/file reference (GlotLID by default) in the Hugging Face
    cache (downloaded unless there already), or a local file checked as is; InputError when it cannot be had."""
    if not spec.startswith(metrics.HF_PREFIX):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError("no such LID model file", path=path)
        return _checked_lid(Fetched("LID", path, False, spec))
    cached = None if force else metrics.cached_hf_file(spec)
    if cached is not None:
        return _checked_lid(Fetched("LID", cached, False, spec))
    repo_id, filename, revision = metrics.parse_hf_spec(spec)
    try:
        path = Path(hf_download(repo_id, filename, revision))
    except Exception as exc:  # noqa: BLE001 - offline (HF_HUB_OFFLINE too), no such repo or file
        raise InputError(f"cannot download the LID model {spec} ({type(exc).__name__}: {exc}); without a "
                         "network here, download it elsewhere and give its path as eval.lid_model (hql-ray "
                         "evaluate --lid-model FILE)") from None
    return _checked_lid(Fetched("LID", path, True, spec))


def _checked_lid(fetched: Fetched) -> Fetched:
    if not metrics.looks_like_fasttext(fetched.path):
        raise InputError("not a fastText model (.bin)", path=fetched.path)
    return fetched
