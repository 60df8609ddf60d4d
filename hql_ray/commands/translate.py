"""`hql-ray translate AMR_RELEASE_DIR --langs deu_Latn ltz_Latn -o data/`: the amr3 corpus, NLLB on Ray Data.

    hql-ray translate LDC2020T02/ --langs deu_Latn ita_Latn tpi_Latn -o data/ --address auto
    hql-ray translate tests/release --langs deu_Latn --model tiny -o /tmp/data       # laptop, no download

Reads every graph of the release (data/amrs/split/{training,dev,test}/*.txt) and its `# ::snt`
sentence, checks them all and the language codes before any work starts, translates each sentence
into each language with one model per Ray Data actor, and writes `<out>/amr3/<code>/amr3_<code>_<split>.tsv`
and the original's `<out>/GoldAMR_SilverText/data/amr3/...` (English, gold: `GoldAMR_GoldText`).
An interrupted run is resumed by running the same command again: finished shards are kept.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hql_ray.commands import flags

DEFAULT_MODEL = "facebook/nllb-200-3.3B"
WORK = ".hql-ray/translate"  # under -o: run.json, shards/, summary.json


def add_parser(sub) -> None:
    from hql_ray.prep.infer_cli import add_pipeline_flags

    p = sub.add_parser(
        "translate", help="translate the AMR 3.0 sentences with NLLB on Ray Data: the amr3 corpus per language",
        description="Translate every English sentence of an AMR 3.0 release into each language (NLLB/M2M100, "
        "forced target-language token) with a Ray Data actor pool, and write the amr3 corpus (our layout and "
        "the original's). Re-running the same command resumes: finished shards are kept.")
    p.add_argument("release", metavar="AMR_RELEASE_DIR", help="the release root (data/amrs/split/...) or its split folder")
    flags.add_langs(p, "target FLORES codes (--langs deu_Latn ltz_Latn, or deu_Latn,ltz_Latn); CODE=TOKEN for a "
                       "model whose language token differs (deu_Latn=__de__ for M2M100)", required=True)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="data folder to write the corpus into")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id or folder of an NLLB/M2M100 model, or 'tiny' (random, no download) ({DEFAULT_MODEL})")
    p.add_argument("--src-lang", default="eng_Latn", help="the model's token for English (eng_Latn; M2M100: __en__)")
    p.add_argument("--layout", choices=["ours", "original", "both"], default="both",
                   help="ours: <out>/amr3/<code>/...; original: <out>/GoldAMR_SilverText/data/amr3/... (both)")
    add_pipeline_flags(p, batch_size=16, max_new_tokens=256)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hql_ray.prep import infer_cli, sharded, translate

    infer_cli.check_positive(args)
    infer_cli.quiet_libraries()
    langs = translate.parse_langs(",".join(flags.words(args.langs)))
    targets = {code: tok for code, tok in langs.items() if code != translate.ENGLISH}
    splits, skipped = translate.read_release(args.release, skip_bad=args.skip_bad)
    for problem in skipped:
        print(f"hql-ray translate: skipped: {problem}", file=sys.stderr)
    out = Path(args.output)
    model = translate.tiny_model_dir(out / ".cache") if args.model == "tiny" else _model_path(args.model)
    tokenizer = _load_tokenizer(model)
    translate.check_lang_tokens(tokenizer, {**targets, "source": args.src_lang}, args.model)
    if hasattr(tokenizer, "src_lang"):
        tokenizer.src_lang = args.src_lang

    # Everything is checked: from here on, work. Source lengths (tokens) order the batches.
    shards = []
    for split, entries in splits.items():
        texts = [e.snt for e in entries]
        lengths = [len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
        for code in targets:
            shards += sharded.plan_shards(code, split, texts, lengths, args.shard_size)
    spec = {"model": model, "src_lang": args.src_lang, "lang_tokens": targets, **infer_cli.generation_spec(args)}
    fingerprint = {"kind": "translate", "model": args.model, "src_lang": args.src_lang, "shard_size": args.shard_size,
                   **infer_cli.generation_spec(args),
                   "inputs": sharded.text_hash(f"{s}\t{e.snt}" for s, es in splits.items() for e in es)}
    work = sharded.WorkDir(out / WORK, fingerprint, targets)
    work.open(restart=args.restart)

    outcome, pool = sharded.Outcome(), None
    if shards:
        sharded.init_ray(args.address)
        pool = sharded.actor_pool(args.actors, args.cpu)
        progress = infer_cli.LanguageProgress("translate", shards)
        progress.start([s for s in shards if work.read(s) is not None])
        print(f"translate: {sum(len(s.rows) for s in shards)} sentence(s) x language in {len(shards)} shard(s), "
              f"{pool.describe()}", file=sys.stderr)
        try:
            outcome = sharded.run_shards(work, shards, spec, pool, batch_size=args.batch_size, on_shard=progress)
        except KeyboardInterrupt:
            print(f"hql-ray translate: interrupted; finished shards are kept in {work.root} "
                  "(run the same command again to resume)", file=sys.stderr)
            return 130
    written = _write_corpora(out, splits, shards, outcome, args.layout)
    summary = infer_cli.summarize(outcome, shards)
    summary["skipped_inputs"] = len(skipped)
    summary["files"] = written
    from hql_ray.outputs.manifest import atomic_write_json

    atomic_write_json(work.root / "summary.json", summary)
    infer_cli.print_summary("translate", summary, pool.describe() if pool else None)
    print(f"translate: wrote {len(written)} file(s) under {out} ({args.layout} layout)", file=sys.stderr)
    return 0


def _write_corpora(out: Path, splits: dict, shards: list, outcome, layout: str) -> list[str]:
    """Pair each graph with its translation (empty outputs left out) and English with the gold sentence."""
    from hql_ray.prep import translate

    files: list[str] = []
    for split, entries in splits.items():
        gold = [(e.amr, e.snt) for e in entries]
        files += map(str, translate.write_corpus(out, "amr3", translate.ENGLISH, split, gold, layout))
    by_key: dict[tuple[str, str], dict[int, str]] = {}
    for shard in shards:
        split = shard.name.split("/", 1)[1].rsplit("-", 1)[0]
        rows = by_key.setdefault((shard.lang, split), {})
        rows.update({r["idx"]: r["output"] for r in outcome.rows[shard.name]})
    for (code, split), outputs in by_key.items():
        pairs = [(e.amr, outputs[i]) for i, e in enumerate(splits[split]) if outputs.get(i)]
        files += map(str, translate.write_corpus(out, "amr3", code, split, pairs, layout))
    return files


def _model_path(model: str) -> str:
    """A local folder as an absolute path (Ray actors have another working directory); a hub id as is."""
    from hql_ray.settings.errors import InputError

    expanded = os.path.abspath(os.path.expanduser(model))
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise InputError("model folder has no config.json (not a Hugging Face model)", path=model)
        return expanded
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise InputError("model folder does not exist", path=model)
    return model


def _load_tokenizer(model: str):
    from transformers import AutoTokenizer

    from hql_ray.settings.errors import InputError

    try:
        return AutoTokenizer.from_pretrained(model)
    except OSError as err:
        raise InputError(f"cannot load the model's tokenizer: {str(err).splitlines()[0]}", path=model) from None
