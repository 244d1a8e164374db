"""Policy kinds by name: adding a model is one module and one line here."""

from __future__ import annotations

import importlib
from pathlib import Path

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


def load_base_policy(model, project_dir: str | Path = ".") -> tuple[FlowPolicy, dict]:
    """The base policy named by `params.model`, and a reference to it for trained checkpoints.

    Returns (policy, base_ref) where base_ref = {"path": absolute folder, "manifest_sha256": digest}
    is what `aegpo.checkpoint.save_trained` records so a trained checkpoint finds and verifies its base.
    Kinds whose base is an aegpo checkpoint folder (tiny_mmdit) load with `load_policy`; other kinds
    implement `from_pretrained(model_params, project_dir)` and `base_ref(model_params, project_dir)`.
    """
    from aegpo.checkpoint import load_policy, manifest_digest

    cls = policy_class(model.kind)
    if hasattr(cls, "from_pretrained_params"):
        policy = cls.from_pretrained_params(model, project_dir)
        return policy, cls.base_ref(model, project_dir)
    from aegpo.checkpoint import CheckpointError, read_manifest

    path = (Path(project_dir) / model.checkpoint).resolve()
    manifest = read_manifest(path)
    if manifest["form"] != "base":
        raise CheckpointError(f"model.checkpoint {path} is a trained ({manifest['form']}) checkpoint, not a base; "
                              f"train from its base ({manifest['base'].get('path')}), or sample/evaluate it instead")
    policy = load_policy(path, guidance_scale=model.guidance_scale)
    return policy, {"path": str(path), "manifest_sha256": manifest_digest(path)}
