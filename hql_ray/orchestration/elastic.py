"""resources.elastic in the driver: free slots offered to running nodes, and a paused node's next launch.

When slots are free and no ready node waits, the run model (`RunModel.resizes`, the critical-path policy
with growth) picks running nodes to go on on more workers, from their progress on the run board. Each is
asked, through the board, to pause: it writes a checkpoint at its next log step and ends its Ray Train run
(`NodeResult.paused_at`). The driver then launches the same run (its name: the checkpoint is found) on the
workers reserved for it here (`Run.resizing`, which `Run.free_slots` leaves aside). docs/scheduling.md.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import ray

from hql_ray.orchestration.job import NodeJob
from hql_ray.orchestration.run_model import RunModel
from hql_ray.orchestration.run_state import Launch, Run
from hql_ray.settings.records import NodeResized, NodeResources, NodeResult

log = logging.getLogger(__name__)
CHECK_EVERY_S = 5.0  # how often free slots are offered to running nodes


def offer_slots(model: RunModel, run: Run) -> None:
    """Ask the run model which running Ray Train nodes should grow on the free slots, and ask those to pause."""
    if model.elastic_policy is None or run.free_slots <= 0 or time.time() < run.next_resize_check:
        return
    run.next_resize_check = time.time() + CHECK_EVERY_S
    if model.ready(run.manifest.statuses, run.in_flight, run.failed):
        return  # (a ready node that got no slot: none is free for growth either)
    try:
        snapshot = ray.get(run.board.snapshot.remote(), timeout=10)
    except Exception as err:  # noqa: BLE001 - growth is an optimisation: a slow board skips this round
        log.debug("no resize check: the run board did not answer (%s)", err)
        return
    done_share = {n: p.step / p.total_steps for n, p in snapshot.items() if p.step and p.total_steps}
    # Searched levels (Tune trials) and warm workers are not resized.
    resizable = {launch.node for launch in run.running.values() if launch.executor == "ray-train"
                 and not launch.is_evaluation and launch.node not in run.resizing}
    for node_id, workers in model.resizes(run.sizes, run.free_slots, run.training, done_share, resizable).items():
        run.resizing[node_id] = workers
        run.board.request_pause.remote(node_id)
        log.info("node %s: grows from %d to %d workers at its next checkpoint", node_id, run.training[node_id],
                 workers)


def resized_job(run: Run, done: Launch, out: NodeResult, on_event) -> NodeJob:
    """A node paused for a resize: its next launch (the same run, on the workers reserved); says so."""
    node_id = done.node
    workers = run.resizing.pop(node_id, done.workers)
    # Before the relaunch asks the board: a pause still set would stop the new run at its first log step.
    ray.get(run.board.pause_over.remote(node_id), timeout=60)
    entry = run.manifest.nodes[node_id]
    resources = entry.resources or NodeResources()
    resources.workers = workers
    run.manifest.update(node_id, resources=resources)
    on_event(NodeResized(node_id, done.workers, workers, out.paused_at))
    return dataclasses.replace(done.job, workers=workers)


def ended(run: Run, node_id: str) -> None:
    """A node done or failed before the pause it was asked for: no resize."""
    if run.resizing.pop(node_id, None) is not None:
        run.board.pause_over.remote(node_id)
