"""Strategies by name (`train.strategy`): adding one is one module and one line here."""

from __future__ import annotations

import importlib

from aegpo.strategies.base import Strategy

STRATEGIES: dict[str, str] = {
    "grpo": "aegpo.strategies.grpo:GRPOStrategy",
    "flow_grpo": "aegpo.strategies.flow_grpo:FlowGRPOStrategy",
    "mixgrpo": "aegpo.strategies.mixgrpo:MixGRPOStrategy",
    "random_k": "aegpo.strategies.random_k:RandomKStrategy",
    "aegpo_global": "aegpo.strategies.aegpo:AEGPOGlobalStrategy",
    "aegpo_local": "aegpo.strategies.aegpo:AEGPOLocalStrategy",
    "aegpo": "aegpo.strategies.aegpo:AEGPOStrategy",
}


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise KeyError(f"train.strategy: unknown strategy {name!r} (expected one of {sorted(STRATEGIES)})")
    module, _, cls = STRATEGIES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_strategy(params) -> Strategy:
    return strategy_class(params.train.strategy)(params)
