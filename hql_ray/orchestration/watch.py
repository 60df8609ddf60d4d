"""The driver's watch over its Ray Train runs, every few seconds: no leaked resources, no silent waits.

- Releases the placement group of every run whose caller was killed (a Tune trial stopped by ASHA):
  see `RunBoard.reap` for why Ray does not always do it.
- When a run has waited longer than `resources.wait_warning_s` for its workers while no run of ours
  trains, says so (log + a `node_waiting` event for the live view), naming what it waits for and
  which placement groups hold the resources. Past `resources.wait_timeout_s` Ray Train gives up on
  the run (see `launch.wait_limits`) and the node fails with the same explanation (`explain`).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import ray

from hql_ray.orchestration import placement
from hql_ray.settings.records import Event, NodeWaiting

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_MARKERS = ("WorkerGroupStartupTimeoutError", "worker group startup timed out",
                           "Timed out after")


class RunWatch:
    def __init__(self, board, warning_s: float, on_event: Callable[[Event], None], interval_s: float = 5.0):
        self.board = board
        self.warning_s = warning_s
        self.on_event = on_event
        self.interval_s = interval_s
        self.notes: dict[str, str] = {}  # node -> the last explanation of its wait
        self._last_tick = 0.0
        self._reported: dict[str, float] = {}  # run -> when its wait was last reported

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._last_tick < self.interval_s:
            return
        self._last_tick = now
        try:  # one call to the board (each costs the driver ~1-2 ms of CPU, Ray's client threads included)
            released, waiting, running = ray.get(self.board.watch.remote(), timeout=30)
            self._log_released(released)
            self._check_waits(now, waiting, running)
        except Exception as err:  # noqa: BLE001 - watching must never stop the run
            log.debug("run watch: %s", err)

    def release_all(self, timeout_s: float = 15.0) -> None:
        """At the end of a run: wait (bounded) until no killed run of ours still holds resources."""
        deadline = time.time() + timeout_s
        try:
            while True:
                self._release_leftovers()
                if not ray.get(self.board.unreleased.remote(), timeout=30) or time.time() > deadline:
                    return
                time.sleep(0.5)
        except Exception as err:  # noqa: BLE001 - the run's results matter more than this
            log.debug("run watch: %s", err)

    def _release_leftovers(self) -> None:
        self._log_released(ray.get(self.board.reap.remote(), timeout=30))

    @staticmethod
    def _log_released(released: list[str]) -> None:
        for what in released:
            log.info("released the resources left by %s", what)

    def _check_waits(self, now: float, waiting: list, running: int) -> None:
        if running:
            return  # something of ours trains: a wait is a queue, not a hang
        for wait in waiting:
            waited = now - wait.since
            last = self._reported.get(wait.run)
            if waited < self.warning_s or (last is not None and now - last < self.warning_s):
                continue
            text = placement.describe_wait(wait, waited, ray.get(self.board.holders.remote(), timeout=30))
            self._reported[wait.run] = now
            self.notes[wait.node] = text
            log.info("waiting for resources: %s", text)  # the reporters show the event
            self.on_event(NodeWaiting(wait.node, text, wait.trial, waited))

    def explain(self, node_id: str, error: str) -> str:
        """A node's error, with what it waited for when Ray Train gave up waiting."""
        note = self.notes.get(node_id)
        if note and any(marker in error for marker in STARTUP_TIMEOUT_MARKERS):
            return f"gave up waiting for resources: {note}. Ray said: {error}"
        return error
