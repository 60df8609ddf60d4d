"""What people ship from a run: final/<code>/ for every language whose last node just finished, in the run's
export mode (`hql_ray.settings.exports`), with its model card; with export.nodes all, also every inner node's
own model under final/nodes/<node id>/ (`hql_ray.outputs.layout`), a family's model for a language without
one. Written by tasks on the driver's machine (where the run folder is) from the saved node adapters: no
adapter passes through the driver."""

from __future__ import annotations

import time
from pathlib import Path

from hql_ray.orchestration import keeper
from hql_ray.orchestration.run_model import RunModel
from hql_ray.outputs import export, export_modes, layout, model_card
from hql_ray.outputs.manifest import Manifest, read_manifest
from hql_ray.settings.records import ExportDone, ExportInfo, ExportStarted, NodeMetrics


class LeafExports:
    def __init__(self, model: RunModel, run_dir: Path, on_event):
        self.model, self.run_dir, self.on_event = model, run_dir, on_event
        # Finished nodes kept from an earlier run (a grown tree): the languages they were trained on, which
        # may be fewer than the tree now puts below them. Any other node was trained on the tree's.
        self.trained: dict[str, list[str]] = {}

    def seen(self, node_id: str) -> dict[str, list[str]]:
        """Node of `node_id`'s path (root first, itself last) -> the languages its adapter was trained on."""
        path = [a.id for a in self.model.tree.ancestors(node_id)] + [node_id]
        return {n: list(self.trained.get(n) or self.model.tree.nodes[n].codes) for n in path}

    def _chain(self, node_id: str, adapters: dict[str, str | None]) -> list[Path]:
        return [self.run_dir / (adapters.get(a) or f"nodes/{a}/adapter") for a in self.model.facts[node_id].model_chain]

    def export(self, node_id: str, head: str, adapters: dict[str, str | None],
               metrics: NodeMetrics | None) -> dict[str, ExportInfo]:
        """The languages node `node_id` finishes, exported; `adapters`: node id -> its saved adapter (relative
        to the run folder). -> {code: what its export holds}."""
        codes = self.model.facts[node_id].leaf_codes
        if not codes:
            return {}
        chain = self._chain(node_id, adapters)
        base_ref = export.base_model_reference(self.model.cfg)
        infos = {}
        for i, code in enumerate(codes, 1):
            started = time.time()
            self.on_event(ExportStarted(node_id, code, i, len(codes)))
            out_dir = layout.language_dir(code, self.run_dir)
            infos[code] = keeper.on_head(head, export_modes.export_language, self.model.cfg, chain, out_dir, base_ref)
            self.write_card(node_id, code, metrics, infos[code])
            self.on_event(ExportDone(node_id, code, i, len(codes), round(time.time() - started, 2)))
        return infos

    def write_card(self, node_id: str, code: str, metrics: NodeMetrics | None, info: ExportInfo | None) -> None:
        out_dir = layout.language_dir(code, self.run_dir)
        card = model_card.card_info(self.model.cfg, self.model.tree, node_id, code, out_dir, metrics, info,
                                    self.seen(node_id), cuda=model_card.ran_on_cuda(read_manifest(self.run_dir)))
        model_card.write_model_card(out_dir, card)

    # ---- inner nodes (export.nodes all) ------------------------------------------------------------
    def wants_node(self, node_id: str) -> bool:
        """Whether the node's own model is exported: export.nodes all, and a node with children (a leaf's
        model is its languages' final/<code>/)."""
        return self.model.cfg.export.nodes == "all" and bool(self.model.tree.nodes[node_id].children)

    def export_node(self, node_id: str, head: str, adapters: dict[str, str | None],
                    metrics: NodeMetrics | None) -> ExportInfo | None:
        """final/nodes/<node_id>/ in the run's export mode, with its card; None when not wanted."""
        if not self.wants_node(node_id):
            return None
        started, label = time.time(), str(layout.node_dir(node_id).relative_to(layout.FINAL))
        self.on_event(ExportStarted(node_id, label))
        out_dir = layout.node_dir(node_id, self.run_dir)
        info = keeper.on_head(head, export_modes.export_language, self.model.cfg, self._chain(node_id, adapters),
                              out_dir, export.base_model_reference(self.model.cfg))
        self.write_node_card(node_id, metrics, info)
        self.on_event(ExportDone(node_id, label, seconds=round(time.time() - started, 2)))
        return info

    def write_cards(self, node_id: str, entry, metrics: NodeMetrics) -> None:
        """The model cards of what a node exported (its languages', its own), with `metrics` (new scores)."""
        for code in entry.exported:
            self.write_card(node_id, code, metrics, entry.exports.get(code))
        if entry.node_export is not None:
            self.write_node_card(node_id, metrics, entry.node_export)

    def write_node_card(self, node_id: str, metrics: NodeMetrics | None, info: ExportInfo | None) -> None:
        out_dir = layout.node_dir(node_id, self.run_dir)
        card = model_card.node_card_info(self.model.cfg, self.model.tree, node_id, out_dir, metrics, info,
                                         self.seen(node_id), cuda=model_card.ran_on_cuda(read_manifest(self.run_dir)))
        model_card.write_model_card(out_dir, card)

    def restore(self, manifest: Manifest, head: str, export: bool = True) -> None:
        """At the start of a run: the languages each finished node was trained on (kept nodes of a grown tree
        saw fewer than the tree now puts below them), and (`export`) the own models of finished nodes that
        export.nodes all wants but an earlier launch did not write, exported now, before the walk."""
        self.trained = {n: v.trained_languages for n, v in manifest.nodes.items() if v.status == "done"}
        if export:
            self.export_missing_nodes(manifest, head)

    def export_missing_nodes(self, manifest: Manifest, head: str) -> None:
        adapters = {n: v.adapter for n, v in manifest.nodes.items()}
        for node_id, entry in manifest.nodes.items():
            present = entry.node_export is not None and layout.node_dir(node_id, self.run_dir).is_dir()
            if entry.status == "done" and entry.adapter and not present and self.wants_node(node_id):
                manifest.update(node_id, node_export=self.export_node(node_id, head, adapters, entry.metrics))
