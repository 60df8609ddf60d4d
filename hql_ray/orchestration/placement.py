"""Placement groups: release one a dead run left behind, and say what a waiting run waits for.

A Ray Train run reserves its workers' CPUs/GPUs as one placement group. These helpers let the driver
free the group of a run whose controller is gone, and, when a run has waited long for resources,
name what it wants, what is free and which groups hold the rest.
"""

from __future__ import annotations

import logging

import ray

log = logging.getLogger(__name__)

SHOWN_RESOURCES = ("CPU", "GPU")


def is_alive(pg) -> bool:
    from ray.util.placement_group import placement_group_table

    try:
        return placement_group_table(pg).get("state", "REMOVED") != "REMOVED"
    except Exception:  # noqa: BLE001 - unknown to Ray: nothing held
        return False


def release(pg) -> bool:
    """Remove `pg` unless Ray already has; True if this call removed it."""
    from ray.util.placement_group import remove_placement_group

    try:
        if not is_alive(pg):
            return False
        remove_placement_group(pg)
        return True
    except Exception as err:  # noqa: BLE001 - removed meanwhile by Ray Train's own cleaner, or Ray is going down
        log.debug("placement group %s not released: %s", pg.id.hex(), err)
        return False


def fmt_resources(resources: dict) -> str:
    shown = {k: v for k, v in resources.items() if k in SHOWN_RESOURCES and v}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}" if shown else "{}"


def describe_wait(wait, waited_s: float, holders: dict[str, str]) -> str:
    """One line: who waits for what, what is free, and which placement groups hold the rest.

    `holders` maps placement group ids (hex) to the run of ours that made them (RunBoard.holders)."""
    from ray.util.placement_group import placement_group_table

    who = wait.node + (f" trial {wait.trial}" if wait.trial else "")
    text = (f"{who} has waited {waited_s:.0f} s for {wait.wants['workers']} worker(s) x "
            f"{fmt_resources(wait.wants['per_worker'])}")
    total, free = ray.cluster_resources(), ray.available_resources()
    text += "; free " + ", ".join(f"{k} {free.get(k, 0.0):g}/{total[k]:g}" for k in SHOWN_RESOURCES if k in total)
    held = []
    for pg_id, info in placement_group_table().items():
        if info.get("state") != "CREATED":
            continue
        bundles: dict[str, float] = {}
        for bundle in info.get("bundles", {}).values():
            for key, value in bundle.items():
                bundles[key] = bundles.get(key, 0.0) + value
        if not any(bundles.get(k) for k in SHOWN_RESOURCES):
            continue
        held.append(f"{fmt_resources(bundles)} by {holders.get(pg_id, 'not a run of this driver')}")
    text += "; held: " + ("; ".join(held) if held else "nothing in placement groups (other tasks or actors hold it)")
    return text
