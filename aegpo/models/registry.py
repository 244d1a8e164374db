"""Policy kinds by name: adding a model is one module and one line here (loading a checkpoint or a
base: aegpo.checkpoint)."""

from __future__ import annotations

import importlib

from aegpo.models.base import FlowPolicy

POLICIES: dict[str, str] = {
    "tiny_mmdit": "aegpo.models.tiny_mmdit:TinyMMDiTPolicy",
    "sd3": "aegpo.models.sd3:SD3Policy",
    "flux": "aegpo.models.flux:FluxPolicy",
}


def policy_class(kind: str) -> type[FlowPolicy]:
    if kind not in POLICIES:
        raise KeyError(f"unknown policy kind {kind!r} (expected one of {sorted(POLICIES)})")
    module, _, name = POLICIES[kind].partition(":")
    return getattr(importlib.import_module(module), name)
