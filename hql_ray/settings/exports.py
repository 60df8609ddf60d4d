"""Export modes: what a language's final/<code>/ holds. One class per mode, one registry (`EXPORT_MODES`).

A mode owns how it is written (`write`, from the primitives of `hql_ray.outputs.export_modes.ExportKit`,
which hold the torch, PEFT and safetensors code), what the model card says of it (`card_line`), and how
it is loaded (`whole_model`: `from_pretrained` on the folder, no PEFT and no separate base; else a PEFT
adapter over the run's base). Adding a mode is one class here and one line in `EXPORT_MODES`;
`export.mode` then accepts its name, and the driver, the model card and `generate` follow it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from hql_ray.settings.errors import ConfigError
from hql_ray.settings.records import ExportInfo


class Exporter:
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""  # what final/<code>/ holds, in words (the model card's export line)
    whole_model: ClassVar[bool] = False

    def write(self, kit, chain_dirs: list[Path], out_dir: Path) -> ExportInfo:
        raise NotImplementedError

    def card_line(self, info: ExportInfo, trained_mode: str) -> str:
        """The model card's line on this export."""
        size = f"; {info.bytes / 1e6:.1f} MB on disk." if info.bytes is not None else "."
        return f"- **Export**: `{self.name}`, {self.help}{self.card_note(info, trained_mode)}{size}"

    def card_note(self, info: ExportInfo, trained_mode: str) -> str:
        return ""


class AdapterExport(Exporter):
    name = "adapter"
    help = "the exact chain of the path's node adapters as one PEFT adapter (fp32)"

    def write(self, kit, chain_dirs, out_dir):
        kit.adapter(chain_dirs, out_dir)
        return ExportInfo(self.name)


class Bf16AdapterExport(Exporter):
    name = "adapter-bf16"
    help = "the exact chain of the path's node adapters as one PEFT adapter, stored in bf16"

    def write(self, kit, chain_dirs, out_dir):
        kit.adapter(chain_dirs, out_dir, dtype="bfloat16")
        return ExportInfo(self.name)


class MergedExport(Exporter):
    name = "merged"
    help = ("a whole model (bf16, with its tokenizer): the full-precision base with the chain's deltas "
            "added to its weights; it loads without PEFT")
    whole_model = True

    def write(self, kit, chain_dirs, out_dir):
        kit.merged(chain_dirs, out_dir)
        return ExportInfo(self.name)

    def card_note(self, info, trained_mode):
        if trained_mode != "qlora":
            return ""
        return (" (the adapters were trained over the 4-bit base: merged into the full-precision one, its "
                "outputs can differ slightly from the scores below)")


class CompactExport(Exporter):
    name = "compact"
    help = "the chain re-projected to one lower-rank PEFT adapter by truncated SVD per module"

    def write(self, kit, chain_dirs, out_dir):
        return ExportInfo(self.name, **kit.compact(chain_dirs, out_dir))

    def card_note(self, info, trained_mode):
        if info.logit_max_abs_error is None:
            return ""
        return (f" (rank {info.rank}); its logits differ from the exact chain's by at most "
                f"{info.logit_max_abs_error:.3g} (relative error {info.logit_rel_error:.3g}) "
                "on a fixed batch of 4 random sequences, base in fp32")


class FullModelExport(Exporter):
    """model.mode fft: the node's whole fine-tuned model, whatever export.mode says."""

    name = "full"
    help = "the whole fully fine-tuned model"
    whole_model = True

    def write(self, kit, chain_dirs, out_dir):
        kit.full(chain_dirs[-1], out_dir)
        return ExportInfo(self.name)


EXPORT_MODES: dict[str, Exporter] = {e.name: e for e in (AdapterExport(), Bf16AdapterExport(), MergedExport(),
                                                         CompactExport())}
FULL_EXPORT = FullModelExport()
# export.nodes: "leaves" exports each language's model; "all" also each inner node's (final/nodes/<node id>/).
EXPORT_NODES = ("leaves", "all")


def exporter_for(cfg) -> Exporter:
    """The mode a run exports in: export.mode's, or the whole model with model.mode fft."""
    if cfg.model.mode == "fft":
        return FULL_EXPORT
    if cfg.export.mode not in EXPORT_MODES:
        raise ConfigError(f"export.mode must be one of {', '.join(EXPORT_MODES)}; got {cfg.export.mode!r}")
    return EXPORT_MODES[cfg.export.mode]


def exporter_named(name: str | None) -> Exporter | None:
    """The mode an export's record names (None for a name this version does not know)."""
    return FULL_EXPORT if name == FULL_EXPORT.name else EXPORT_MODES.get(name or "")
