"""The run folder at the start of a run: a new record, or the earlier run's continued (--resume, -sv, --grow).

`open_manifest` checks what the folder allows (`run_model.check_run_folder`, `check_skips`: the same
checks as the dry run) before writing anything, then creates or upgrades the record (`growth.open_grown`:
a grown tree, --retrain) and marks the nodes this run skips. `restore_done` (Ray up) checks every finished
node's saved adapter on the head and keeps the intact ones; a node whose evaluation failed is queued to be
scored again; anything else is redone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hql_ray.orchestration import growth, keeper, run_model
from hql_ray.orchestration.run_state import Run
from hql_ray.outputs import run_files
from hql_ray.outputs.manifest import Manifest
from hql_ray.settings.config import Config
from hql_ray.settings.errors import ConfigError
from hql_ray.settings.records import NodeSkipped
from hql_ray.settings.tree import LanguageTree

log = logging.getLogger(__name__)


def open_manifest(cfg: Config, tree: LanguageTree, skipped: set[str]) -> Manifest:
    """The run's record: the earlier run's (--resume, -sv) or a new one; nothing is written if a check fails."""
    run_dir = cfg.run_dir.absolute()
    old = run_model.check_run_folder(cfg, tree, skipped)
    run_model.check_skips(tree, skipped, old, run_dir)
    if old is None:
        manifest = Manifest.create(run_dir / "manifest.json", tree, cfg.to_dict(), cfg.run_name)
    else:  # --resume, -sv (the skipped nodes reused, the others retrained), --grow, --retrain
        manifest = growth.open_grown(cfg, tree, old, run_model.growth_of(cfg, tree, skipped, old))
    for node_id in skipped:
        if manifest.nodes[node_id].status != "done":
            manifest.update(node_id, status="skipped")
    run_files.open_run_files(cfg, run_dir)  # config.yaml and this start's line in train.log
    return manifest


def _check_only(path: str, checksum: str | None) -> None:
    """keeper.check_saved without sending the adapter back (run on the head by `keeper.on_head`)."""
    keeper.check_saved(path, checksum)


def restore_done(run: Run, run_dir: Path, skipped: set[str], rescore: bool, on_event) -> None:
    """Done nodes whose saved adapter is intact are kept (and, with `rescore`, a failed evaluation queued to
    be scored again); a damaged one is trained again (an error for a -sv node); nodes an earlier launch
    left running are pending again (their launch continues from its checkpoints)."""
    manifest = run.manifest
    for node_id, entry in manifest.nodes.items():
        if entry.status == "done" and entry.adapter:
            try:  # read and checked on the head by a task: the driver holds no adapter
                keeper.on_head(run.head, _check_only, str(run_dir / entry.adapter), entry.checksum)
            except Exception as err:  # noqa: BLE001 - any damage means: train again
                if node_id in skipped:
                    raise ConfigError(f"tree.skip (-sv): the saved adapter of skipped node {node_id} is unusable "
                                      f"({err}); train it again (leave it out of -sv)") from err
                log.warning("node %s: saved adapter %s unusable (%s); it will be trained again", node_id,
                            run_dir / entry.adapter, err)
                manifest.update(node_id, status="pending", adapter=None)
                continue
            on_event(NodeSkipped(node_id))
            error = entry.metrics.evaluation_error if entry.metrics else None
            if error and rescore:
                log.warning("node %s: its evaluation failed in the earlier run (%s); evaluating it again",
                            node_id, error)
                run.evaluate.add(node_id)
        elif node_id in skipped:  # -sv, not done: marked "skipped", never launched
            on_event(NodeSkipped(node_id))
        elif entry.status != "pending":
            manifest.update(node_id, status="pending", started_at=None, finished_at=None)
