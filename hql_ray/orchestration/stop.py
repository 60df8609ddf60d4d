"""A run's stop on SIGTERM: what Kubernetes, Slurm, `ray job stop` and a cloud's preemption notice send.

Python's default for SIGTERM is to die at once, and Ray's core installs a fault handler that dumps native
stacks and exits 134, as a crash looks. `on_sigterm` turns the signal into `Stopped`, raised in the main
thread like Ctrl-C's KeyboardInterrupt: the driver then asks every node in flight to write a checkpoint,
waits a bounded time (resources.stop_checkpoint_wait_s), marks the run interrupted and the command exits 143.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import ray

log = logging.getLogger(__name__)

EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a process that stopped on it


class Stopped(BaseException):
    """SIGTERM reached the driver (a BaseException, like KeyboardInterrupt: no handler for errors catches it)."""


def _raise(signum, frame) -> None:
    raise Stopped("SIGTERM")


def on_sigterm() -> None:
    """SIGTERM raises `Stopped` in the main thread (from now on; Ray's own handler, if any, is replaced).
    Called before Ray starts and again after, since starting Ray installs its handler over ours."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def checkpoint_in_flight(board, nodes: set[str], wait_s: float) -> dict[str, int]:
    """Ask the nodes in flight (through the run board) for a checkpoint now, and wait until each has written
    one or `wait_s` has passed; says which did. -> node -> the step of its checkpoint."""
    if not nodes:
        return {}
    ray.get(board.request_checkpoint.remote(), timeout=10)
    deadline, written = time.time() + wait_s, {}
    while time.time() < deadline and not nodes <= set(written):
        time.sleep(0.5)
        written = {}
        for key, step in ray.get(board.checkpoints.remote(), timeout=10).items():  # "node" or "node trial t"
            node = key.split(" trial ")[0]
            written[node] = max(step, written.get(node, step))
    for node_id in sorted(nodes):
        log.warning("node %s: %s", node_id, f"checkpoint written at step {written[node_id]}" if node_id in written
                    else "no checkpoint in time; it continues from its last periodic one")
    return written
