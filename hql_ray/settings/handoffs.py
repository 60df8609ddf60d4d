"""Hand-off modes: how a child node starts from its ancestors. One class per mode, one registry (`HANDOFFS`).

A mode says, without torch, what a child starts from (`handed_on`), which adapters the node holds frozen
beside its own on the GPU (`frozen_ranks`: the memory estimate and the dry run ask), which adapters its
trained model sits on when it is scored again (`evaluation_parents`), what the config must satisfy
(`check`), and how the child's model is put together (`attach`), from the primitives of the training
layer's `AdapterKit` (`hql_ray.training.handoff`), which hold the torch and PEFT code.

Adding a mode is one class here and one line in `HANDOFFS`; `model.handoff` then accepts its name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hql_ray.settings.errors import ConfigError


class HandOff:
    """The default rule: a child starts from its whole chain (its ancestors' adapters, root first)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""

    def handed_on(self, chain: list) -> list:
        """Of a node's chain (its ancestors, root first, then itself; ids or adapters alike), what a child
        starts from."""
        return list(chain)

    def frozen_ranks(self, ancestor_ranks: list[int]) -> list[int]:
        """Ranks of the adapters a node holds frozen beside its own (given its ancestors' ranks)."""
        return []

    def evaluation_parents(self, chain: list) -> list:
        """Of a node's start chain, the adapters its trained model sits on besides its own."""
        return []

    def check(self, cfg) -> None:
        """Raise ConfigError if this mode cannot run with `cfg`."""

    def attach(self, kit, model, lora, chain: list) -> Any:
        """The node's model from the bare base `model`: a PEFT model whose only trainable adapter is "node"."""
        raise NotImplementedError


class Stack(HandOff):
    name = "stack"
    help = ("the child keeps every ancestor's adapter, frozen, and trains a fresh one on top (exact: the 4-bit "
            "base is never re-quantized; a leaf exports as one adapter of the chain's summed rank)")

    def frozen_ranks(self, ancestor_ranks: list[int]) -> list[int]:
        return list(ancestor_ranks)

    def evaluation_parents(self, chain: list) -> list:
        return list(chain)

    def attach(self, kit, model, lora, chain: list) -> Any:
        node = kit.fresh(model, lora)
        if chain:
            kit.freeze_beside(node, kit.concat(chain))
        return node


class Merge(HandOff):
    name = "merge"
    help = "the original's: every ancestor merged into the base in turn (4-bit: re-quantized), a fresh adapter"

    def evaluation_parents(self, chain: list) -> list:
        return list(chain)

    def attach(self, kit, model, lora, chain: list) -> Any:
        return kit.fresh(kit.merged_into_base(model, chain), lora)


class Continue(HandOff):
    name = "continue"
    help = ("the child trains its parent's adapter further (re-projected when the child's rank or alpha "
            "differs)")

    def handed_on(self, chain: list) -> list:
        return list(chain[-1:])

    def attach(self, kit, model, lora, chain: list) -> Any:
        node = kit.fresh(model, lora)
        if chain:
            kit.load_node(node, kit.fitted(chain[-1], lora))
        return node


class FullModel(HandOff):
    """model.mode fft: no adapters; a node's state is the whole model, and a child starts from its parent's."""

    name = "full"
    help = "fft: the child starts from its parent's whole fine-tuned model"

    def handed_on(self, chain: list) -> list:
        return list(chain[-1:])

    def attach(self, kit, model, lora, chain: list) -> Any:
        if chain:
            kit.load_full(model, chain[-1])
        return model


HANDOFFS: dict[str, HandOff] = {mode.name: mode for mode in (Stack(), Merge(), Continue())}
FULL = FullModel()


def handoff_for(cfg) -> HandOff:
    """The rule a run follows: model.handoff's, or the whole-model rule with model.mode fft."""
    if cfg.model.mode == "fft":
        if cfg.model.handoff != "stack":
            raise ConfigError("model.handoff applies to lora/qlora; with -tm fft leave it at its default (stack)")
        return FULL
    if cfg.model.handoff not in HANDOFFS:
        raise ConfigError(f"model.handoff must be one of {', '.join(HANDOFFS)}; got {cfg.model.handoff!r}")
    mode = HANDOFFS[cfg.model.handoff]
    mode.check(cfg)
    return mode
