"""Checkpoints: a folder with `aegpo_checkpoint.json` and safetensors weights, written atomically.

Two forms:
- **base** (`"form": "base"`): every weight of the policy (denoiser, text encoder) and its tokenizer.
- **adapter** (`"form": "lora"` or `"full"`): trained denoiser weights only (LoRA adapter or the
  full denoiser) plus a reference to the base checkpoint folder and the SHA-256 of its manifest,
  so a checkpoint never silently loads onto the wrong base.

Weights are only ever read with safetensors; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aegpo.io_utils import CorruptFileError, atomic_directory, check_safetensors, load_safetensors
from aegpo.models.base import FlowPolicy, LoraSpec
from aegpo.models.registry import policy_class

MANIFEST = "aegpo_checkpoint.json"
FORMAT = "aegpo-checkpoint"
VERSION = 1


FORMS = ("base", "lora", "full")


class CheckpointError(ValueError):
    """A folder that is not an aegpo checkpoint, or one that does not match its base."""


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not an aegpo checkpoint: {MANIFEST} is missing "
            "(expected a folder written by `aegpo pretrain` or `aegpo train`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged: copy it again "
                              "or retrain it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path}: expected format {FORMAT!r} version {VERSION}, got {got!r}")
    missing = [k for k in ("form", "policy", "files") if k not in manifest]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(repr(k) for k in missing)} (an incomplete or hand-edited "
                              "manifest); copy the checkpoint again or retrain it")
    if manifest["form"] not in FORMS:
        raise CheckpointError(f"{path}: form {manifest['form']!r} is not one of {', '.join(FORMS)}")
    if manifest["form"] != "base" and not isinstance(manifest.get("base"), dict):
        raise CheckpointError(f"{path}: a trained ({manifest['form']}) checkpoint needs its 'base' reference")
    return manifest


def check_files(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Every safetensors file the manifest names is present and whole (headers only: cheap)."""
    directory = Path(directory)
    remedy = "the checkpoint is damaged: copy it again or retrain it"
    for name in manifest["files"].values():
        if isinstance(name, str) and name.endswith(".safetensors"):
            try:
                check_safetensors(directory / name, remedy)
            except CorruptFileError as err:
                raise CheckpointError(str(err)) from None


def manifest_digest(directory: str | Path) -> str:
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_base(policy: FlowPolicy, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write every weight of `policy` as a self-contained base checkpoint."""
    with atomic_directory(directory) as tmp:
        files = policy.save_base_files(tmp)  # type: ignore[attr-defined]
        manifest = {"format": FORMAT, "version": VERSION, "form": "base", "policy": policy.describe(),  # type: ignore[attr-defined]
                    "files": files, "meta": meta or {}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(directory)


def save_trained(policy: FlowPolicy, directory: str | Path, base: str | Path | dict[str, Any],
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the trained denoiser weights (LoRA adapter or full) with a reference to the base.

    `base` is a base checkpoint folder, or a base reference dict from `load_base_policy`.
    """
    from peft.utils import get_peft_model_state_dict

    if not isinstance(base, dict):
        base_dir = Path(base).resolve()
        base = {"path": str(base_dir), "manifest_sha256": manifest_digest(base_dir)}
    with atomic_directory(directory) as tmp:
        if policy.lora is not None:
            form, state = "lora", get_peft_model_state_dict(policy.transformer)
        else:
            form, state = "full", policy.transformer.state_dict()
        save_file(_contiguous(state), str(tmp / "denoiser.safetensors"))
        manifest = {
            "format": FORMAT, "version": VERSION, "form": form, "policy": policy.describe(),  # type: ignore[attr-defined]
            "base": base,
            "lora": None if policy.lora is None else {**policy.lora.__dict__,
                                                      "target_modules": list(policy.lora.target_modules)},
            "files": {"denoiser": "denoiser.safetensors"}, "meta": meta or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Path(directory)


def load_policy(directory: str | Path, **policy_kwargs: Any) -> FlowPolicy:
    """Load a base or trained checkpoint into a policy (LoRA adapters stay separate, not merged)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    check_files(directory, manifest)
    if manifest["form"] == "base":
        cls = policy_class(manifest["policy"]["kind"])
        return cls.load_base_files(directory, manifest, **policy_kwargs)  # type: ignore[attr-defined]
    base = manifest["base"]
    kind = manifest["policy"]["kind"]
    cls = policy_class(kind)
    if hasattr(cls, "from_base_ref"):  # pretrained (diffusers) bases know how to reload themselves
        policy = cls.from_base_ref(base, **policy_kwargs)
        return _apply_trained(policy, directory, manifest)
    base_dir = Path(base["path"])
    if not base_dir.is_absolute():
        base_dir = (directory / base_dir).resolve()
    if not (base_dir / MANIFEST).is_file():
        raise CheckpointError(f"{directory}: its base checkpoint {base_dir} is missing")
    if manifest_digest(base_dir) != base["manifest_sha256"]:
        raise CheckpointError(f"{directory}: base checkpoint {base_dir} has changed since training "
                              "(manifest hash differs)")
    return _apply_trained(load_policy(base_dir, **policy_kwargs), directory, manifest)


def _apply_trained(policy: FlowPolicy, directory: Path, manifest: dict[str, Any]) -> FlowPolicy:
    try:
        state = load_safetensors(directory / manifest["files"]["denoiser"],
                                 "the checkpoint is damaged: copy it again or retrain it")
    except CorruptFileError as err:
        raise CheckpointError(str(err)) from None
    if manifest["form"] == "lora":
        from peft.utils import set_peft_model_state_dict

        lora = manifest["lora"]
        policy.add_lora(LoraSpec(**{**lora, "target_modules": tuple(lora["target_modules"])}))
        result = set_peft_model_state_dict(policy.transformer, state)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"{directory}: unexpected adapter weights {result.unexpected_keys[:3]}")
    else:
        policy.transformer.load_state_dict(state)
    return policy


def load_base_policy(model, project_dir: str | Path = ".") -> tuple[FlowPolicy, dict]:
    """The base policy named by `params.model`, and a reference to it for trained checkpoints.

    Returns (policy, base_ref) where base_ref = {"path": absolute folder, "manifest_sha256": digest}
    is what `aegpo.checkpoint.save_trained` records so a trained checkpoint finds and verifies its base.
    Kinds whose base is an aegpo checkpoint folder (tiny_mmdit) load with `load_policy`; other kinds
    implement `from_pretrained(model_params, project_dir)` and `base_ref(model_params, project_dir)`.
    """
    cls = policy_class(model.kind)
    if hasattr(cls, "from_pretrained_params"):
        policy = cls.from_pretrained_params(model, project_dir)
        return policy, cls.base_ref(model, project_dir)
    path = (Path(project_dir) / model.checkpoint).resolve()
    manifest = read_manifest(path)
    if manifest["form"] != "base":
        raise CheckpointError(f"model.checkpoint {path} is a trained ({manifest['form']}) checkpoint, not a base; "
                              f"train from its base ({manifest['base'].get('path')}), or sample/evaluate it instead")
    policy = load_policy(path, guidance_scale=model.guidance_scale)
    return policy, {"path": str(path), "manifest_sha256": manifest_digest(path)}
