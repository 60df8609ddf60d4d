"""`hql-ray parse FLORES_DIR --parser RUN_OR_MODEL -o data/`: silver AMRs for FLORES -> the flores corpus.

    hql-ray parse flores200_dataset/ --parser runs/eng_text2amr -o data/ --address auto
    hql-ray parse flores200_dataset/ --parser ./amr-parser-model --split-map dev=train,devtest=test -o data/

Parses every English sentence of the FLORES splits in --split-map with the parser (a hql-ray
`--direction text2amr` run, whose English adapter is used as `hql-ray generate` would, or a seq2seq
model folder given the bare sentence), on a Ray Data actor pool; keeps the graphs penman reads
(the others are counted and listed, never written); pairs each with every language's sentence of
the same row: `<out>/flores/<code>/flores_<code>_<split>.tsv` and the original's
`<out>/SilverAMR_GoldText/data/flores/...`. Re-running the same command resumes from its shards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hql_ray.commands import flags

WORK = ".hql-ray/parse"
MAX_LISTED = 10


def add_parser(sub) -> None:
    from hql_ray.prep.infer_cli import add_pipeline_flags
    from hql_ray.prep.parse_amr import DEFAULT_SPLIT_MAP

    p = sub.add_parser(
        "parse", help="parse the English FLORES sentences into AMR on Ray Data: the flores corpus per language",
        description="Parse English FLORES-200 with a text-to-AMR model (a hql-ray text2amr run or a seq2seq "
        "folder) on a Ray Data actor pool, keep the well-formed graphs and pair them with every language. "
        "Re-running the same command resumes: finished shards are kept.")
    p.add_argument("flores", metavar="FLORES_DIR", help="FLORES-200 (dev/<code>.dev, devtest/<code>.devtest, or flat)")
    p.add_argument("--parser", required=True, metavar="RUN_OR_MODEL",
                   help="a hql-ray run trained with --direction text2amr, or a seq2seq model folder / hub id")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="data folder to write the corpus into")
    flags.add_langs(p, "languages to pair (--langs deu_Latn ita_Latn, or deu_Latn,ita_Latn; default: every "
                       "language in FLORES_DIR)")
    p.add_argument("--split-map", default=DEFAULT_SPLIT_MAP,
                   help=f"FLORES split -> our split ({DEFAULT_SPLIT_MAP})")
    p.add_argument("--validation-size", type=int, default=200, metavar="N",
                   help="when no FLORES split maps to validation: the last N train rows become validation (200)")
    p.add_argument("--layout", choices=["ours", "original", "both"], default="both",
                   help="ours: <out>/flores/<code>/...; original: <out>/SilverAMR_GoldText/data/flores/... (both)")
    add_pipeline_flags(p, batch_size=16, max_new_tokens=512)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hql_ray.prep import infer_cli, parse_amr, sharded
    from hql_ray.settings.errors import InputError
    from hql_ray.outputs.manifest import atomic_write_json
    from hql_ray.prep.translate import ENGLISH, parse_langs

    infer_cli.check_positive(args)
    if args.validation_size < 0:
        raise InputError(f"--validation-size must be >= 0, got {args.validation_size}")
    infer_cli.quiet_libraries()
    split_map = parse_amr.parse_split_map(args.split_map)
    langs = list(parse_langs(",".join(flags.words(args.langs)))) if args.langs else None
    files = parse_amr.find_flores_files(args.flores)
    texts, skipped = parse_amr.read_flores(files, langs, split_map, skip_bad=args.skip_bad)
    for problem in skipped:
        print(f"hql-ray parse: skipped: {problem}", file=sys.stderr)
    spec, kind = parse_amr.parser_spec(args.parser)
    out = Path(args.output)

    shards = []
    for split, by_lang in texts.items():
        english = by_lang[ENGLISH]
        inputs = [s or "" for s in english]
        lengths = [len(s) for s in inputs]  # characters: they only order the batches
        for shard in sharded.plan_shards(ENGLISH, split, inputs, lengths, args.shard_size):
            shard.rows = [r for r in shard.rows if english[r[0]] is not None]  # blank (--skip-bad): nothing to parse
            shards += [shard] if shard.rows else []
    fingerprint = {"kind": "parse", "parser": spec.get("run") or spec["model"], "shard_size": args.shard_size,
                   **infer_cli.generation_spec(args),
                   "inputs": sharded.text_hash(f"{sp}\t{s}" for sp, bl in texts.items() for s in bl[ENGLISH] if s)}
    work = sharded.WorkDir(out / WORK, fingerprint)
    work.open(restart=args.restart)

    sharded.init_ray(args.address)
    pool = sharded.actor_pool(args.actors, args.cpu)
    progress = infer_cli.LanguageProgress("parse", shards)
    progress.start([s for s in shards if work.read(s) is not None])
    print(f"parse: {sum(len(s.rows) for s in shards)} English sentence(s) in {len(shards)} shard(s), "
          f"{pool.describe()}", file=sys.stderr)
    try:
        outcome = sharded.run_shards(work, shards, {**spec, **infer_cli.generation_spec(args)}, pool,
                                     batch_size=args.batch_size, on_shard=progress)
    except KeyboardInterrupt:
        print(f"hql-ray parse: interrupted; finished shards are kept in {work.root} "
              "(run the same command again to resume)", file=sys.stderr)
        return 130
    summary = infer_cli.summarize(outcome, shards)
    summary["graphs"], files_written = _write_flores(out, texts, shards, outcome, split_map, args)
    summary["skipped_inputs"] = len(skipped)
    summary["files"] = files_written
    atomic_write_json(work.root / "summary.json", summary)
    infer_cli.print_summary("parse", summary, pool.describe())
    g = summary["graphs"]
    print(f"parse: {g['valid']} well-formed graph(s), {g['invalid']} rejected by penman (not written)", file=sys.stderr)
    for problem in g["rejected"][:MAX_LISTED]:
        print(f"parse: rejected {problem}", file=sys.stderr)
    print(f"parse: wrote {len(files_written)} file(s) under {out} ({args.layout} layout)", file=sys.stderr)
    return 0


def _write_flores(out: Path, texts: dict, shards: list, outcome, split_map: dict, args) -> tuple[dict, list[str]]:
    """Check every graph; pair the good ones with each language's sentence of the same row, per our split."""
    from hql_ray.prep import parse_amr
    from hql_ray.prep.translate import ENGLISH, write_corpus

    graphs: dict[tuple[str, int], str] = {}
    rejected: list[str] = []
    for shard in shards:
        split = shard.name.split("/", 1)[1].rsplit("-", 1)[0]
        for row in outcome.rows[shard.name]:
            graph, problem = parse_amr.check_graph(row["output"])
            if graph is None:
                rejected.append(f"{split}:{row['idx'] + 1}: {problem}: {row['output'][:80]!r}")
            else:
                graphs[(split, row["idx"])] = graph
    carve = "validation" not in split_map.values()
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for split, by_lang in texts.items():
        labels = parse_amr.assign_splits(len(by_lang[ENGLISH]), split_map[split], args.validation_size, carve)
        for code, sentences in by_lang.items():
            for i, (label, sentence) in enumerate(zip(labels, sentences)):
                graph = graphs.get((split, i))
                pairs.setdefault((code, label), [])
                if graph is not None and sentence is not None:
                    pairs[(code, label)].append((graph, sentence))
    files: list[str] = []
    for (code, label), rows in sorted(pairs.items()):
        files += map(str, write_corpus(out, "flores", code, label, rows, args.layout))
    return {"valid": len(graphs), "invalid": len(rejected), "rejected": rejected}, files
