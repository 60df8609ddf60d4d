"""A finished run scored again from the texts it kept (`hql-ray evaluate RUN`): no model, no retraining.

Every node's every language and test set kept its sources, hypotheses and references under the run folder
(`evaluation.write_node_texts`; the scores' `texts` names the folder). Those files are scored again with the
metrics of `hql_ray.scoring.metrics` (spBLEU, BLEU (13a), chrF++, LID, LID diff) and the given model files,
and the record's scores, signatures and reasons for what is still not computed are replaced; its samples,
clip counts and texts stay. The original's per-node JSON next to the texts is rewritten with the new
values. Parsing runs (smatch) need no model file and are left as they are.
"""

from __future__ import annotations

import dataclasses
import math
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hql_ray.outputs.manifest import Manifest
from hql_ray.scoring.evaluation import TEXT_FILES, GeneratedTexts, write_node_texts
from hql_ray.scoring.metrics import effective_lid_model, read_lid_baseline, text_scores
from hql_ray.settings.errors import InputError
from hql_ray.settings.records import TestSetScores


@dataclass
class EvalModels:
    """The model files the scores are computed with (None: the caches', as a run reads them)."""

    spbleu_model: str | None = None
    lid_model: str | None = None
    lid_baseline: str | None = None  # the references' LID per test set (eval.lid_baseline, the -ge JSON)


@dataclass
class Rescored:
    """What `rescore_run` did: test sets scored again, and those it could not, with why."""

    scored: int = 0
    nodes: set[str] = field(default_factory=set)  # the nodes whose scores changed
    smatch: int = 0  # parsing runs' test sets (smatch needs no model: kept)
    missing: list[str] = field(default_factory=list)  # "node code test set: why"


def read_texts(folder: Path, n: int) -> GeneratedTexts:
    """The line-aligned texts of one test set; InputError if a file is missing or they do not hold `n` lines."""
    found = {}
    for key, name in TEXT_FILES.items():
        path = folder / name
        if not path.is_file():
            raise InputError("not here", path=path)
        text = path.read_text(encoding="utf-8")
        found[key] = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        if len(found[key]) != n:
            raise InputError(f"{len(found[key])} lines, but the run scored {n} examples", path=path)
    return GeneratedTexts(**found)


def rescored_record(record: TestSetScores, texts: GeneratedTexts, code: str, models: EvalModels,
                    reference_lid: float | None) -> TestSetScores:
    """The record with every text metric computed again on `texts`; the rest of it kept."""
    scores = text_scores(texts.hypotheses, texts.references, code=code, spbleu_model=models.spbleu_model,
                         lid_model=models.lid_model, reference_lid=reference_lid)
    values = {name: (None if isinstance(v, float) and not math.isfinite(v) else v) for name, v in
              {"spbleu": scores["spbleu"], "bleu_13a": scores["bleu_13a"], "chrf": scores["chrf++"],
               "lid": scores["lid"], "lid_diff": scores["lid_diff"], "reference_lid": scores["reference_lid"]}.items()}
    source = None
    if values["reference_lid"] is not None:
        source = "eval.lid_baseline" if reference_lid is not None else "computed"
    return dataclasses.replace(record, **values, reference_lid_source=source, signatures=scores["signatures"],
                               not_computed=scores["not_computed"], error=None)


def _baseline(models: EvalModels) -> dict[str, dict[str, float]]:
    if not models.lid_baseline or effective_lid_model(models.lid_model) is None:
        return {}
    return read_lid_baseline(models.lid_baseline)


def _why_missing(run_dir: Path, record: TestSetScores) -> str | None:
    """Why a record's texts cannot be read here, or None when they can."""
    ref = record.texts
    if ref is None or not ref.dir:
        return (ref.error if ref is not None and ref.error else
                "its texts were not kept (a run of an older hql-ray, or a failed evaluation)")
    if not (run_dir / ref.dir).is_dir():
        where = f"on {ref.host}'s disk, not here" if ref.host and ref.host != socket.gethostname() else "gone"
        return f"its texts ({ref.dir}) are {where}"
    return None


def rescore_run(manifest: Manifest, run_dir: Path, models: EvalModels) -> Rescored:
    """Every node's scores computed again from its kept texts, in the manifest (saved) and in the original's
    per-node JSON files. The caller writes results and model cards from the manifest."""
    run_dir = Path(run_dir)
    baseline = _baseline(models)
    done = Rescored()
    for node_id, entry in manifest.nodes.items():
        for code, sets in (entry.metrics.languages if entry.metrics else {}).items():
            texts_by_folder: dict[str, dict[str, GeneratedTexts]] = {}
            for test_set, record in sets.items():
                if record.is_smatch:
                    done.smatch += 1
                    continue
                why = _why_missing(run_dir, record)
                try:
                    texts = read_texts(run_dir / record.texts.dir, record.n) if why is None else None
                except InputError as err:
                    why, texts = str(err), None
                if texts is None:
                    done.missing.append(f"{node_id} {code} {test_set}: {why}")
                    continue
                sets[test_set] = rescored_record(record, texts, code, models, (baseline.get(test_set) or {}).get(code))
                folder = str(Path(record.texts.dir).parent.parent)  # evaluation/<node>[/trial...]
                texts_by_folder.setdefault(folder, {})[test_set] = texts
                done.scored += 1
                done.nodes.add(node_id)
            for folder, texts in texts_by_folder.items():
                write_node_texts(run_dir, folder, code, {t: sets[t] for t in texts}, texts)
    manifest.save()
    return done
