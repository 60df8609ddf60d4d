"""What a finished run leaves for people: the per-language results table and the leaf exports."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from hql_ray.config import Config
from hql_ray.manifest import Manifest, atomic_write_text
from hql_ray.tree import LanguageTree

COLUMNS = ["code", "language", "node", "val_loss", "initial_val_loss", "bleu", "chrf++", "spbleu", "n_test"]


def base_model_reference(cfg: Config) -> str:
    """What an exported adapter's config names as its base (the tiny model: its local folder)."""
    if cfg.model.base == "tiny":
        from hql_ray import modeling
        from hql_ray.node import cache_dir_for

        return modeling.resolve_base_model("tiny", cache_dir_for(cfg) / "models")
    return cfg.model.base


def export_full_model(cfg: Config, state: dict, out_dir: Path) -> None:
    """fft leaves: a whole model folder (save_pretrained) instead of an adapter."""
    import torch

    from hql_ray import handoff, modeling

    model = modeling.load_base_model(base_model_reference(cfg), "fft", torch.device("cpu"))
    handoff.load_full_state(model, state)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    modeling.load_tokenizer(cfg.model.base).save_pretrained(str(out_dir))


def language_rows(manifest: Manifest, tree: LanguageTree) -> list[dict]:
    """One row per language: the metrics of the node that finished it (its leaf)."""
    rows = []
    for lang in tree.languages:
        leaf = tree.leaf_for(lang.code)
        entry = manifest.nodes[leaf.id]
        metrics = entry.get("metrics") or {}
        scores = (metrics.get("languages") or {}).get(lang.code, {})
        ancestors = tree.ancestors(leaf.id)
        root_id = ancestors[0].id if ancestors else leaf.id
        root_metrics = manifest.nodes[root_id].get("metrics") or {}
        rows.append(
            {
                "code": lang.code,
                "language": lang.name,
                "node": leaf.id,
                "val_loss": metrics.get("val_loss"),
                "initial_val_loss": root_metrics.get("initial_val_loss"),
                "bleu": scores.get("bleu"),
                "chrf++": scores.get("chrf++"),
                "spbleu": scores.get("spbleu"),
                "n_test": scores.get("n"),
            }
        )
    return rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def to_markdown(rows: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    lines += ["", "val_loss: best validation loss at the language's last node; initial_val_loss: the untrained",
              "model's validation loss on the root's data. BLEU/chrF++/spBLEU on the language's test split.", ""]
    return "\n".join(lines)


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(manifest: Manifest, tree: LanguageTree, run_dir: Path) -> list[dict]:
    rows = language_rows(manifest, tree)
    atomic_write_text(Path(run_dir) / "results.md", to_markdown(rows, f"Results of run {manifest.data['run']}"))
    atomic_write_text(Path(run_dir) / "results.csv", to_csv(rows))
    return rows
