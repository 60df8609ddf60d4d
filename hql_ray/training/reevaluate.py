"""`--resume` after a failed evaluation: score a trained node again from its saved adapter, no training.

A node whose evaluation failed (`metrics.evaluation_error`: a test file that did not parse, a GPU out of
memory while generating) is kept as done: its adapter is persisted and its children train from it.
On `--resume` the driver runs this instead of training it again. Ray-free, like `node.train_node`.
"""

from __future__ import annotations

import logging

from hql_ray.data import dataset as ds_lib
from hql_ray.scoring import evaluation
from hql_ray.training import handoff, modeling
from hql_ray.settings.config import Config
from hql_ray.training.context import LocalContext, NodeContext
from hql_ray.training.node import build_model
from hql_ray.settings.records import AdapterState, NodeMetrics, NodeResult, NodeSpec, Progress

log = logging.getLogger(__name__)


def load_trained(cfg: Config, parents: list[AdapterState], own: AdapterState, device):
    """The node's model as it was trained: its parents' adapters with its own saved one in "node"."""
    if cfg.model.mode == "fft":
        model = build_model(cfg, [], device)
        handoff.load_full_state(model, own)
    else:
        model = build_model(cfg, parents, device)
        handoff.load_into(model, own, handoff.NODE)
    model.eval()
    return model


def evaluate_trained_node(cfg: Config, node: NodeSpec, chain: list[AdapterState],
                          ctx: NodeContext | None = None) -> NodeResult:
    """`chain` = the evaluation parents' adapters (`HandOff.evaluation_parents`), then the node's own (last).
    Rank 0 generates and scores; the result's metrics hold the languages' scores or, if it fails again,
    the evaluation error."""
    ctx = ctx or LocalContext()
    if not chain:
        raise ValueError(f"node {node.id}: re-evaluation needs the node's saved adapter")
    metrics = NodeMetrics()
    if ctx.is_main:
        model = load_trained(cfg, chain[:-1], chain[-1], ctx.device)
        ctx.progress(Progress(node=node.id, phase="evaluate"))
        try:
            metrics.languages = evaluation.evaluate_node(
                model, modeling.load_tokenizer(cfg.model.base), cfg, ds_lib.DataSettings.from_config(cfg),
                list(node.languages), cfg.cache_dir, ctx.device, node_id=node.id, progress=ctx.progress)
        except Exception as err:  # noqa: BLE001 - the node stays done; --resume can try again
            log.exception("node %s: evaluation failed again", node.id)
            metrics.evaluation_error = f"{type(err).__name__}: {err}"
    ctx.report({"done": True}, None)
    return NodeResult(None, metrics, [])
