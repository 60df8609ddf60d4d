"""What people ship from a run: final/<code>/ for every language whose last node just finished, in the run's
export mode (`hql_ray.settings.exports`), with its model card. Written by tasks on the driver's machine
(where the run folder is) from the saved node adapters: no adapter passes through the driver."""

from __future__ import annotations

import time
from pathlib import Path

from hql_ray.orchestration import keeper
from hql_ray.orchestration.run_model import RunModel
from hql_ray.outputs import export, export_modes, model_card
from hql_ray.settings.records import ExportDone, ExportInfo, ExportStarted, NodeMetrics


class LeafExports:
    def __init__(self, model: RunModel, run_dir: Path, on_event):
        self.model, self.run_dir, self.on_event = model, run_dir, on_event

    def export(self, node_id: str, head: str, adapters: dict[str, str | None],
               metrics: NodeMetrics | None) -> dict[str, ExportInfo]:
        """The languages node `node_id` finishes, exported; `adapters`: node id -> its saved adapter (relative
        to the run folder). -> {code: what its export holds}."""
        codes = self.model.facts[node_id].leaf_codes
        if not codes:
            return {}
        chain = [self.run_dir / (adapters.get(a) or f"nodes/{a}/adapter") for a in
                 self.model.facts[node_id].model_chain]
        base_ref = export.base_model_reference(self.model.cfg)
        infos = {}
        for i, code in enumerate(codes, 1):
            started = time.time()
            self.on_event(ExportStarted(node_id, code, i, len(codes)))
            out_dir = self.run_dir / "final" / code
            infos[code] = keeper.on_head(head, export_modes.export_language, self.model.cfg, chain, out_dir, base_ref)
            self.write_card(node_id, code, metrics, infos[code])
            self.on_event(ExportDone(node_id, code, i, len(codes), round(time.time() - started, 2)))
        return infos

    def write_card(self, node_id: str, code: str, metrics: NodeMetrics | None, info: ExportInfo | None) -> None:
        out_dir = self.run_dir / "final" / code
        card = model_card.card_info(self.model.cfg, self.model.tree, node_id, code, out_dir, metrics, info)
        model_card.write_model_card(out_dir, card)
