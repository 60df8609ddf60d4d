"""`hql-ray evaluate RUN [--spbleu-model FILE] [--lid-model FILE|hf://...]`: score a finished run again.

    hql-ray fetch-eval-models && hql-ray evaluate runs/demo      # spBLEU and LID for a run that had neither
    hql-ray evaluate runs/demo --spbleu-model flores200.model --lid-model glotlid.bin

Reads the sources, hypotheses and references every node kept (evaluation/<node>/<code>/<test set>/*.txt),
scores them with today's metrics and the given model files (no model is loaded, nothing is trained), and
updates the run's manifest, results.md|csv and the model cards' score tables. Without flags, the run's own
eval.spbleu_model / eval.lid_model where they exist here, else the caches `hql-ray fetch-eval-models` fills.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

IN_FLIGHT = ("starting", "running")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a finished run again from its kept texts (spBLEU, LID...), no retraining",
        description="Score every node's kept hypotheses again (spBLEU, BLEU (13a), chrF++, LID, LID diff) and "
        "update the run's manifest, results.md|csv and model cards. No model is loaded and nothing is trained.",
    )
    p.add_argument("run_dir", metavar="RUN", help="a run folder (manifest.json, evaluation/)")
    p.add_argument("--spbleu-model", metavar="FILE",
                   help="SentencePiece model for spBLEU (default: the run's eval.spbleu_model, else sacreBLEU's "
                        "cached flores200 model: hql-ray fetch-eval-models)")
    p.add_argument("--lid-model", metavar="FILE|hf://...",
                   help="fastText language-ID model (default: the run's eval.lid_model, else GlotLID from the "
                        "Hugging Face cache: hql-ray fetch-eval-models)")
    p.add_argument("--force", action="store_true",
                   help="score a run whose record says it is still running (its driver died: nothing else writes it)")
    p.set_defaults(run=run)


def _here(path: str | None) -> str | None:
    """A model path of the run's config, if it can be read here (hf:// references always can be tried)."""
    if path is None or path.startswith("hf://") or Path(path).expanduser().is_file():
        return path
    print(f"hql-ray evaluate: the run's {path} is not here; the caches are used instead", file=sys.stderr)
    return None


def models_for(args: argparse.Namespace, cfg):
    """The models to score with: the flags, else the run's own where they exist here; checked like a run's."""
    from hql_ray.outputs.rescore import EvalModels
    from hql_ray.scoring import metrics

    cfg.eval.spbleu_model = str(Path(args.spbleu_model).expanduser().absolute()) if args.spbleu_model else \
        _here(cfg.eval.spbleu_model)
    lid = args.lid_model
    cfg.eval.lid_model = (lid if lid.startswith("hf://") else str(Path(lid).expanduser().absolute())) if lid else \
        _here(cfg.eval.lid_model)
    cfg.eval.generate = True
    for note in metrics.check_eval_files(cfg):  # a given file that does not load: ConfigError (exit 2)
        print(f"hql-ray evaluate: {note}", file=sys.stderr)
    return EvalModels(cfg.eval.spbleu_model, cfg.eval.lid_model, cfg.eval.lid_baseline)


def refresh_cards(manifest, tree, run_dir: Path, cfg) -> int:
    """Each exported language's model card written again with its leaf's new scores; -> cards written."""
    from hql_ray.orchestration.leaf_exports import LeafExports
    from hql_ray.orchestration.run_model import RunModel

    exports = LeafExports(RunModel(cfg, tree), run_dir, on_event=lambda event: None)
    written = 0
    for lang in tree.languages:
        leaf = manifest.nodes.get(tree.leaf_for(lang.code).id)
        if leaf is None or lang.code not in leaf.exported or not (run_dir / "final" / lang.code).is_dir():
            continue
        exports.write_card(leaf.id, lang.code, leaf.metrics, leaf.exports.get(lang.code))
        written += 1
    return written


def run(args: argparse.Namespace) -> int:
    from hql_ray.outputs import rescore, results
    from hql_ray.outputs.manifest import read_manifest, run_tree
    from hql_ray.settings.errors import InputError

    manifest = read_manifest(args.run_dir)
    run_dir = manifest.path.parent
    if manifest.data.get("status") in IN_FLIGHT and not args.force:
        raise InputError(f"the run is {manifest.data['status']} (its record says so): score it once it has finished; "
                         "if its driver is gone, --force", path=run_dir)
    tree, note = run_tree(manifest)
    if note:
        print(f"hql-ray evaluate: {note}", file=sys.stderr)
    cfg = manifest.config
    if cfg.data.direction != "amr2text":
        raise InputError("a text2amr run is scored with smatch, which needs no model file: nothing to score again",
                         path=run_dir)
    models = models_for(args, cfg)
    # The record says which models its scores are from (None: the caches; the signatures name the files).
    manifest.data["config"].setdefault("eval", {}).update(spbleu_model=models.spbleu_model, lid_model=models.lid_model)
    done = rescore.rescore_run(manifest, run_dir, models)  # (saves the manifest)
    rows = results.write_results(manifest, tree, run_dir)
    cards = refresh_cards(manifest, tree, run_dir, cfg)
    for line in done.missing:
        print(f"hql-ray evaluate: not scored again: {line}", file=sys.stderr)
    print((run_dir / "results.md").read_text(encoding="utf-8"))
    print(f"scored again: {done.scored} test set(s) of {len(done.nodes)} node(s); {len(rows)} result row(s); wrote "
          f"{run_dir / 'results.md'}, results.csv, manifest.json and {cards} model card(s)")
    return 1 if done.missing and not done.scored else 0
