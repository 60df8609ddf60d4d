"""What `hql-ray translate` and `hql-ray parse` share on the command line: flags, progress, summary."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from hql_ray.settings.errors import InputError
from hql_ray.prep.sharded import Outcome, Shard


def add_pipeline_flags(p: argparse.ArgumentParser, batch_size: int, max_new_tokens: int) -> None:
    g = p.add_argument_group("generation and distribution")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"sentences per generate call ({batch_size})")
    g.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default), more = beam search")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"output length limit; longer outputs are cut and counted as truncated ({max_new_tokens})")
    g.add_argument("--max-source-length", type=int, default=512, help="input tokens kept (512)")
    g.add_argument("--shard-size", type=int, default=1000,
                   help="sentences per shard: the unit written at once and kept by an interrupted run (1000)")
    g.add_argument("--actors", type=int, help="model actors (default: one per GPU of the cluster, else 1)")
    g.add_argument("--cpu", action="store_true", help="CPU actors even where the cluster has GPUs")
    g.add_argument("--address", help="Ray cluster to join (auto, host:port); default: start a local Ray")
    g.add_argument("--restart", action="store_true", help="discard the shards of an earlier run in -o first")
    g.add_argument("--skip-bad", action="store_true", help="leave bad inputs out (counted and listed) instead of stopping")


def check_positive(args: argparse.Namespace) -> None:
    for flag in ("batch_size", "num_beams", "max_new_tokens", "max_source_length", "shard_size", "actors"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def generation_spec(args: argparse.Namespace) -> dict:
    return {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
            "max_source_length": args.max_source_length}


def quiet_libraries() -> None:
    """Our lines on stderr, not weight-loading bars (Ray Data's own progress bars stay)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


class LanguageProgress:
    """`translate: deu_Latn 2000/5012 sentences (train-00001 written)`, one line per finished shard."""

    def __init__(self, command: str, shards: list[Shard]):
        self.command = command
        self.total = Counter()
        self.done = Counter()
        for s in shards:
            self.total[s.lang] += len(s.rows)

    def start(self, reused: list[Shard]) -> None:
        for s in reused:
            self.done[s.lang] += len(s.rows)
        for lang in self.total:
            note = f" ({self.done[lang]} from an earlier run)" if self.done[lang] else ""
            print(f"{self.command}: {lang} {self.done[lang]}/{self.total[lang]} sentences{note}", file=sys.stderr)

    def __call__(self, shard: Shard, n: int) -> None:
        self.done[shard.lang] += n
        print(f"{self.command}: {shard.lang} {self.done[shard.lang]}/{self.total[shard.lang]} sentences "
              f"({shard.name.split('/', 1)[1]} written)", file=sys.stderr, flush=True)


def summarize(outcome: Outcome, shards: list[Shard]) -> dict:
    """Per language: sentences, empty and truncated outputs, tokens; and this run's throughput."""
    per: dict[str, Counter] = {}
    for s in shards:
        c = per.setdefault(s.lang, Counter())
        for row in outcome.rows.get(s.name, []):
            c["sentences"] += 1
            c["empty"] += not row["output"]
            c["truncated"] += row["truncated"]
            c["tokens"] += row["n_tokens"]
    new_tokens = outcome.tokens
    secs = outcome.seconds
    return {
        "languages": {lang: dict(c) for lang, c in per.items()},
        "shards_written": outcome.written, "shards_reused": outcome.reused,
        "sentences_generated": outcome.sentences, "tokens_generated": new_tokens, "seconds": round(secs, 3),
        "sentences_per_s": round(outcome.sentences / secs, 2) if secs else None,
        "tokens_per_s": round(new_tokens / secs, 1) if secs else None,
    }


def print_summary(command: str, summary: dict, pool_text: str | None) -> None:
    s = summary
    if s["sentences_generated"]:
        print(f"{command}: generated {s['sentences_generated']} output(s) in {s['seconds']:.1f} s with {pool_text}: "
              f"{s['sentences_per_s']} sentences/s, {s['tokens_per_s']} tokens/s", file=sys.stderr)
    print(f"{command}: shards: {s['shards_written']} written now, {s['shards_reused']} reused from an earlier run",
          file=sys.stderr)
    print(f"{'language':<12} {'sentences':>9} {'empty':>6} {'truncated':>9} {'tokens':>8}", file=sys.stderr)
    for lang, c in s["languages"].items():
        print(f"{lang:<12} {c.get('sentences', 0):>9} {c.get('empty', 0):>6} {c.get('truncated', 0):>9} "
              f"{c.get('tokens', 0):>8}", file=sys.stderr)
