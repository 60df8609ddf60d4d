"""The model actor of `hql-ray translate` and `hql-ray parse`: one seq2seq model per Ray Data actor.

Ray Data builds one ``Seq2SeqPredictor`` per actor of the pool (so the model loads once per GPU, or
once per CPU actor locally) and calls it on batches of rows ``{shard, idx, text, lang}``. It answers
``{shard, idx, output, n_tokens, truncated}``: the decoded text on one line, the number of tokens
generated (for tokens/s) and whether generation stopped at ``max_new_tokens`` instead of at EOS.

Two ways to get the model, from a plain dict spec (it crosses the Ray boundary):
- ``{"model": DIR_OR_HUB_ID}``: any Hugging Face seq2seq model (NLLB/M2M100, a text-to-AMR model).
  With ``lang_tokens`` each row's target language is forced as the first generated token (NLLB's
  ``forced_bos_token_id``); ``src_lang`` sets the tokenizer's source-language prefix.
- ``{"run": RUN_DIR, "run_lang": CODE}``: a hql-ray run's exported adapter, loaded and prompted
  exactly as `hql-ray generate` does (hql_ray.outputs.generate.Generator).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pick_device(spec: dict) -> str:
    import torch

    wanted = spec.get("device") or "auto"
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


class Seq2SeqPredictor:
    """Callable class for ``Dataset.map_batches``: generation for a batch of rows, row order kept."""

    def __init__(self, spec: dict[str, Any]):
        import torch

        self.spec = spec
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))  # a CPU actor uses the CPUs Ray gave it, no more
        self.device = pick_device(spec)
        self.max_new_tokens = int(spec.get("max_new_tokens", 256))
        self.max_source_length = int(spec.get("max_source_length", 512))
        self.num_beams = int(spec.get("num_beams", 1))
        self.lang_tokens: dict[str, int] = {}
        self.prompt = None
        if spec.get("run"):
            from hql_ray.outputs.generate import load_generator

            gen = load_generator(spec["run"], spec["run_lang"], device=self.device)
            self.model, self.tokenizer = gen.model, gen.tokenizer
            self.prompt = gen.source  # the run's own prompt and linearization
            self.max_source_length = gen.max_source_length
        else:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(spec["model"])
            # bf16 on GPUs: NLLB and T5-family models are trained in it; fp16 overflows on T5.
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            self.model = AutoModelForSeq2SeqLM.from_pretrained(spec["model"], dtype=dtype).to(self.device).eval()
            if spec.get("src_lang") and hasattr(self.tokenizer, "src_lang"):
                self.tokenizer.src_lang = spec["src_lang"]
            self.lang_tokens = {code: self.tokenizer.convert_tokens_to_ids(tok)
                                for code, tok in (spec.get("lang_tokens") or {}).items()}
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        langs = [str(x) for x in batch["lang"]]
        outputs: list[str] = [""] * len(texts)
        n_tokens = np.zeros(len(texts), dtype=np.int64)
        truncated = np.zeros(len(texts), dtype=bool)
        # One generate call per target language: the forced first token is one id per call.
        for lang in dict.fromkeys(langs):
            rows = [i for i, x in enumerate(langs) if x == lang]
            done = self._generate([texts[i] for i in rows], self.lang_tokens.get(lang))
            for i, (text, count, cut) in zip(rows, done):
                outputs[i], n_tokens[i], truncated[i] = text, count, cut
        return {"shard": batch["shard"], "idx": batch["idx"], "output": np.array(outputs, dtype=object),
                "n_tokens": n_tokens, "truncated": truncated}

    def _generate(self, texts: list[str], forced: int | None) -> list[tuple[str, int, bool]]:
        import torch

        sources = [self.prompt(t) for t in texts] if self.prompt else texts
        enc = self.tokenizer(sources, padding=True, truncation=True, max_length=self.max_source_length,
                             return_tensors="pt").to(self.device)
        kwargs = {"forced_bos_token_id": forced} if forced is not None else {}
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                      do_sample=False, **kwargs)
        # out[:, 0] is the decoder start; the forced language token is a prompt, not an output.
        body = out[:, 1 + (forced is not None):].tolist()
        texts_out = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        result = []
        for ids, text in zip(body, texts_out):
            ended = self.eos in ids
            content = ids[:ids.index(self.eos)] if ended else ids
            count = sum(1 for t in content if t != self.pad)
            result.append((" ".join(text.split()), count, not ended))  # one line, no tabs
        return result
