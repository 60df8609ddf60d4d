"""Sentences/s of `hql-ray translate`'s Ray Data pipeline against a plain generate loop in one process.

Same inputs, same model, same batches: the bundled sample's English amr3 sentences (train split),
translated into --langs languages by a random NLLB-shaped model built from a config (no download).
The loop loads the model once and calls `generate` batch after batch (length-sorted, forced target
token), like a hand-written script would; the pipeline is `sharded.run_shards` (Ray Data, a pool of
model actors, shards written to disk). Both times include loading the model (in the actors for Ray).

    .venv/bin/python benchmarks/translate.py                    # tiny model, CPU
    .venv/bin/python benchmarks/translate.py --size small       # a 4-layer d_model 256 model: more work per batch
    .venv/bin/python benchmarks/translate.py --size nllb-600m   # facebook/nllb-200-distilled-600M's shape (GPU)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import ROOT, quiet, start_ray, temp_dir

SIZES = {  # M2M100Config overrides on top of tiny_nllb's
    "tiny": {},
    "small": {"d_model": 256, "encoder_layers": 4, "decoder_layers": 4, "encoder_attention_heads": 4,
              "decoder_attention_heads": 4, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "init_std": 0.05},
    "nllb-600m": {"d_model": 1024, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
                  "decoder_attention_heads": 16, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096, "init_std": 0.02},
}


def build_model(size: str, out: Path) -> str:
    """tiny_nllb's tokenizer and weights, re-shaped for --size; saved where actors can load it."""
    import torch
    from transformers import M2M100ForConditionalGeneration

    from hql_ray.prep.tiny_nllb import _vocab, tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(len(_vocab()), len(tok))
    if SIZES[size]:
        config = model.config
        for key, value in SIZES[size].items():
            setattr(config, key, value)
        torch.manual_seed(0)
        model = M2M100ForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def sentences(n: int) -> list[str]:
    path = ROOT / "data/sample/amr3/eng_Latn/amr3_eng_Latn_train.tsv"
    return [line.split("\t")[1] for line in path.read_text(encoding="utf-8").splitlines()][:n]


def plain_loop(model_dir: str, texts: list[str], langs: list[str], batch: int, max_new: int, device: str) -> float:
    """One process: load, then generate for each language in length-sorted batches. Returns seconds."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    order = sorted(texts, key=len, reverse=True)
    with torch.no_grad():
        for lang in langs:
            for k in range(0, len(order), batch):
                enc = tok(order[k:k + batch], padding=True, return_tensors="pt").to(device)
                model.generate(**enc, forced_bos_token_id=tok.convert_tokens_to_ids(lang), max_new_tokens=max_new,
                               num_beams=1, do_sample=False)
    return time.perf_counter() - t0


def ray_pipeline(model_dir: str, texts: list[str], langs: list[str], batch: int, max_new: int, actors: int,
                 cpu: bool, work_dir: Path) -> tuple[float, int]:
    from hql_ray.prep import sharded

    lengths = [len(t) for t in texts]
    shards = [s for lang in langs for s in sharded.plan_shards(lang, "train", texts, lengths, 1000)]
    work = sharded.WorkDir(work_dir, {"bench": True})
    work.open()
    pool = sharded.actor_pool(actors, cpu)
    spec = {"model": model_dir, "src_lang": "eng_Latn", "lang_tokens": {x: x for x in langs},
            "max_new_tokens": max_new}
    t0 = time.perf_counter()
    out = sharded.run_shards(work, shards, spec, pool, batch_size=batch)
    assert out.sentences == len(texts) * len(langs)
    return time.perf_counter() - t0, out.tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("-n", type=int, default=240, help="English sentences (240 = the whole sample train split)")
    p.add_argument("--langs", default="deu_Latn,ita_Latn")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (and torch threads of the loop)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each, interleaved; the best is reported")
    args = p.parse_args()
    quiet()
    import torch

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    texts, langs = sentences(args.n), args.langs.split(",")
    total = len(texts) * len(langs)
    torch.set_num_threads(args.cpus)
    with temp_dir("bench-translate-") as tmp:
        model_dir = build_model(args.size, tmp / "model")
        start_ray(args.cpus, gpus)
        # (actors, CPU-only): one GPU actor and one per GPU; locally 1 actor with every CPU, then one per CPU.
        configs = [(1, False)] + [(gpus, False)] * (gpus > 1) if cuda else [(1, True), (args.cpus, True)]
        times: dict[str, list[float]] = {}
        for r in range(args.repeat):  # interleaved, so a busy spell of a shared machine hits all alike
            times.setdefault("plain loop, 1 process", []).append(
                plain_loop(model_dir, texts, langs, args.batch_size, args.max_new_tokens, "cuda" if cuda else "cpu"))
            for actors, cpu in configs:
                secs, _ = ray_pipeline(model_dir, texts, langs, args.batch_size, args.max_new_tokens, actors, cpu,
                                       tmp / f"work-{actors}-{cpu}-{r}")
                kind = "CPU" if cpu or not cuda else "GPU"
                times.setdefault(f"Ray Data, {actors} {kind} actor(s)", []).append(secs)
        rows = [(name, min(ts)) for name, ts in times.items()]
        loop_s = rows[0][1]
    print(f"\n{total} translations ({len(texts)} sentences x {len(langs)} languages), model {args.size}, batch "
          f"{args.batch_size}, max {args.max_new_tokens} new tokens, {'cuda' if cuda else f'{args.cpus} CPUs'}\n")
    print("| pipeline | seconds | sentences/s | vs loop |\n|---|---:|---:|---:|")
    for name, secs in rows:
        print(f"| {name} | {secs:.1f} | {total / secs:.1f} | {loop_s / secs:.2f}× |")


if __name__ == "__main__":
    main()
