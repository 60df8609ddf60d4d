"""Node adapters between the workers, the run folder and the children, without passing through the driver.

At mT5-large r=256 an adapter is 1.17 GB. The driver used to receive each one as the node's result, save
it and `ray.put` it for the children: every adapter's pages went through the driver's memory (12.3 GB
RSS on the PTHQL dry run). Now:

- the node's rank 0 hands its adapter to the run's `AdapterKeeper`, an actor on the driver's machine
  (the run folder is there), which saves it to nodes/<id>/adapter, checksums it and `ray.put`s the copy
  the children read: the keeper owns it, so it outlives the node's workers. The driver takes the
  reference (no bytes) and drops it when no node still to run needs it;
- `--resume` puts saved adapters back in the object store with `load_saved` tasks, whose return value
  the driver owns, again without reading the bytes;
- exports run as tasks on the driver's machine (`on_head`), reading the saved adapters there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hql_ray.settings.records import AdapterState
from hql_ray.training.adapter_files import from_wire, load_adapter_state, save_adapter_state, state_checksum, to_wire


@ray.remote(num_cpus=0)
class AdapterKeeper:
    """Holds each finished run's adapter in the object store (as its owner) until the driver takes it.
    Keyed by the Ray Train run name (a node's, or one trial's of a searched node)."""

    def __init__(self) -> None:
        self.kept: dict[str, ray.ObjectRef] = {}

    def keep(self, run: str, wire: AdapterState, path: str) -> str:
        """Save `wire` under `path` (persisted before the node is done), keep it in the store; its checksum."""
        state = from_wire(wire, copy=False)  # the argument's arrays, read in place
        save_adapter_state(state, path)
        checksum = state_checksum(state)
        self.kept[run] = ray.put(wire)
        return checksum

    def adopt(self, node_run: str, trial_run: str, trial_path: str, node_path: str) -> None:
        """A searched node's best trial becomes the node: its saved adapter moved to the node's folder, its
        reference kept under the node's run (read back from disk if this keeper did not keep it: a search
        resumed by a later launch). The other trials' references go; their files stay with the trials."""
        source, target = Path(trial_path), Path(node_path)
        if source.exists():  # (else moved already by a launch that died right after)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        ref = self.kept.pop(trial_run, None)
        self.kept[node_run] = ref if ref is not None else ray.put(to_wire(load_adapter_state(target)))
        for run in [r for r in self.kept if r.startswith(f"{node_run}.trial_")]:
            del self.kept[run]

    def take(self, run: str) -> list:
        """The kept reference, in a list (so the caller gets the reference, not the bytes)."""
        return [self.kept.pop(run)]

    def drop(self, run: str) -> None:
        self.kept.pop(run, None)
        for trial in [r for r in self.kept if r.startswith(f"{run}.trial_")]:
            del self.kept[trial]


def start_keeper(head_node_id: str):
    return AdapterKeeper.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id, soft=False)).remote()


def check_saved(path: str, checksum: str | None) -> AdapterState:
    """The adapter saved under `path`; raises if it does not load or does not match `checksum`."""
    state = load_adapter_state(path)
    if checksum is not None and state_checksum(state) != checksum:
        raise ValueError(f"{path}: checksum mismatch")
    return state


@ray.remote(num_cpus=0)
def _load_saved(path: str, checksum: str | None) -> AdapterState:
    return to_wire(check_saved(path, checksum))


def load_saved(head_node_id: str, path: str | Path, checksum: str | None = None) -> ray.ObjectRef:
    """A saved adapter in the object store, read on the head by a task: the driver owns the result, unread."""
    strategy = NodeAffinitySchedulingStrategy(head_node_id, soft=False)
    return _load_saved.options(scheduling_strategy=strategy).remote(str(path), checksum)


@ray.remote(num_cpus=0)
def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def on_head(head_node_id: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a task on the driver's machine (where the run folder is); its result."""
    strategy = NodeAffinitySchedulingStrategy(head_node_id, soft=False)
    return ray.get(_call.options(scheduling_strategy=strategy).remote(fn, *args, **kwargs))
