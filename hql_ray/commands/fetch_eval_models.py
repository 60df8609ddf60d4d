"""`hql-ray fetch-eval-models [--only spbleu|lid] [--force]`: the paper's metric models, where runs read them.

    hql-ray fetch-eval-models          # flores200 SentencePiece (spBLEU) + GlotLID (LID), once per machine

Downloads sacreBLEU's flores200 SentencePiece model into sacreBLEU's cache (~/.sacrebleu/models, or
$SACREBLEU) and GlotLID (cis-lmu/glotlid model.bin, 1.6 GB) into the Hugging Face cache: where a run looks
when eval.spbleu_model / eval.lid_model are not set, so every later run (and `hql-ray evaluate` of an earlier
one) computes spBLEU and LID without flags. Needs a network; on a cluster, run it on every machine that
evaluates (or put both files on shared storage and set eval.spbleu_model / eval.lid_model).
"""

from __future__ import annotations

import argparse
import sys

WHAT = ("spbleu", "lid")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fetch-eval-models",
        help="download the spBLEU and LID models (flores200 SentencePiece, GlotLID) where runs read them",
        description="Download sacreBLEU's flores200 SentencePiece model (spBLEU) into sacreBLEU's cache and GlotLID "
        "(LID) into the Hugging Face cache, where runs and `hql-ray evaluate` find them without flags. "
        "Needs a network.",
    )
    p.add_argument("--only", choices=WHAT, help="fetch one of the two (default: both)")
    p.add_argument("--force", action="store_true", help="download again even if the cache has them")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hql_ray.scoring import eval_models, metrics
    from hql_ray.settings.errors import InputError

    fetchers = {"spbleu": lambda: eval_models.fetch_spbleu_model(force=args.force),
                "lid": lambda: eval_models.fetch_lid_model(metrics.GLOTLID, force=args.force)}
    failed = 0
    for what in ([args.only] if args.only else WHAT):
        try:
            fetched = fetchers[what]()
        except InputError as err:  # each said on its own line; the other model is still fetched
            print(f"hql-ray fetch-eval-models: error: {err}", file=sys.stderr)
            failed += 1
            continue
        state = "downloaded" if fetched.downloaded else "already there"
        state += f", {fetched.name}" if fetched.name else ""
        print(f"{fetched.metric}: {fetched.path} ({state}; from {fetched.source})")
    if failed:
        return 2
    print("runs now compute them without flags; `hql-ray evaluate RUN` scores a finished run again")
    return 0
