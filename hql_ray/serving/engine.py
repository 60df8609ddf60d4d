"""A model replica's models, without Ray (`LanguageModels`): one base with every served language's adapter
attached (PEFT), generating mixed-language batches through `generate(..., adapter_names=[...])`; or, for
whole-model exports (merged, fft), one model per language.

Loading goes through `hql-ray generate`'s `Generator` (the base as the run trained it: 4-bit for qlora, the
run's tokenizer), and generation through the same `scoring.evaluation.generate`, so a served output equals
`hql-ray generate`'s for the same graph (greedy). Not thread-safe: the replica runs one call at a time."""

from __future__ import annotations

import gc
from collections import defaultdict

from hql_ray.serving.catalog import Catalog
from hql_ray.serving.requests import Item, Output


class LanguageModels:
    """The models of one replica. `attach(code)` loads a language (its adapter on the shared base, or its
    whole model), `detach(code)` drops it, `generate(items)` runs a batch that may mix attached languages."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.peft = None  # the PeftModel over the one shared base (adapter exports)
        self.models: dict = {}  # code -> whole model (merged / fft exports)
        self.order: list[str] = []  # attached languages, oldest first
        self.stale: str | None = None  # PEFT cannot drop its last adapter: dropped when the next one comes
        self.held = {"base_bytes": 0, "adapter_bytes": 0, "models": 0}  # `memory()` after the last change

    @property
    def attached(self) -> list[str]:
        return list(self.order)

    def attach(self, code: str) -> None:
        if code in self.order:
            return
        gen = self.catalog.generators[code]
        if self.catalog.whole_models:
            self.models[code] = gen.model
        elif self.peft is None:
            from peft import PeftModel

            self.peft = PeftModel.from_pretrained(gen.load_base(), str(gen.model_dir), adapter_name=code)
        elif code == self.stale:
            self.stale = None
        else:
            self.peft.load_adapter(str(gen.model_dir), adapter_name=code)
        if self.peft is not None:
            self.peft.eval()  # new LoRA modules come in training mode (dropout); mixed batches need eval
            if self.stale is not None:
                self.peft.set_adapter(code)
                self.peft.delete_adapter(self.stale)
                self.stale = None
        self.order.append(code)
        self.held = self.memory()

    def detach(self, code: str) -> None:
        if code not in self.order:
            return
        self.order.remove(code)
        if self.catalog.whole_models:
            del self.models[code]
        elif not self.order:
            self.stale = code
        else:
            if code in self.peft.active_adapters:
                self.peft.set_adapter(self.order[-1])
            self.peft.delete_adapter(code)
        gc.collect()
        _empty_cuda_cache()
        self.held = self.memory()

    def generate(self, items: list[Item]) -> list[Output]:
        """Outputs in the order of `items`. One `generate` call per (num_beams, max_new_tokens), and per
        language for whole models; within it, languages mixed through PEFT's `adapter_names`."""
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            whole = item.language if self.catalog.whole_models else None
            groups[(item.num_beams, item.max_new_tokens, whole)].append(i)
        outputs: list[Output | None] = [None] * len(items)
        for (beams, max_new_tokens, _), indices in groups.items():
            group = [items[i] for i in indices]
            for i, out in zip(indices, self.generate_group(group, beams, max_new_tokens)):
                outputs[i] = out
        return outputs

    def generate_group(self, group: list[Item], num_beams: int, max_new_tokens: int) -> list[Output]:
        from hql_ray.scoring.evaluation import generate

        languages = [item.language for item in group]
        missing = sorted(set(languages) - set(self.order))
        if missing:
            raise RuntimeError(f"language(s) {', '.join(missing)} not attached on this replica")
        gen = self.catalog.generators[languages[0]]
        names = None
        if self.catalog.whole_models:
            model, tokenizer = self.models[languages[0]], gen.tokenizer  # a whole model's own tokenizer
        else:
            model = self.peft
            tokenizer = self.catalog.generators[self.catalog.codes[0]].tokenizer  # the base's, read once
            if len(set(languages)) == 1:  # one language: the plain path, no per-layer split of the batch
                self.peft.set_adapter(languages[0])
            else:
                names = languages
        result = generate(model, tokenizer, [item.source for item in group], batch_size=len(group),
                          max_new_tokens=max_new_tokens, max_source_length=gen.max_source_length,
                          device=gen.device, num_beams=num_beams, adapter_names=names)
        return [Output(lang, " ".join(text.split()), clipped)  # one line each, as `generate` prints
                for lang, text, clipped in zip(languages, result.outputs, result.clipped)]

    def memory(self) -> dict:
        """Bytes of parameters held: the base's (each tensor counted once) and the adapters' (LoRA factors)."""
        seen: set[int] = set()
        base = adapters = 0
        models = [self.peft] if self.peft is not None else list(self.models.values())
        for model in models:
            for name, param in model.named_parameters():
                if param.data_ptr() in seen:
                    continue
                seen.add(param.data_ptr())
                size = param.numel() * param.element_size()
                if ".lora_" in name:
                    adapters += size
                else:
                    base += size
        return {"base_bytes": base, "adapter_bytes": adapters, "models": len(models)}


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
