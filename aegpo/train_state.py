"""Resumable training state: trainable weights, AdamW state, EMA and counters, in safetensors + JSON.

The state folder is replaced atomically after each saved round, so a run killed at any
point (kill -9 included) resumes from the last completed save; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aegpo.io_utils import CorruptFileError, atomic_directory, load_safetensors, read_json_file

STATE_FILE = "state.json"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, _, key = name.partition(".")
        state.setdefault(int(pid), {})[key] = value
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_state(
    directory: str | Path,
    named_params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    ema_tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
) -> None:
    """Write the whole state atomically: the folder is either the previous or the new complete state."""
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    with atomic_directory(directory) as tmp:
        save_file({k: p.detach().contiguous().cpu() for k, p in named_params.items()},
                  str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        if ema_tensors:
            save_file({k: v.cpu() for k, v in ema_tensors.items()}, str(tmp / "ema.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps({**info, "optimizer": opt_meta}, indent=1), encoding="utf-8")


def load_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                               dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable tensors, optimizer tensors, ema tensors, info) of a saved state.

    A damaged state (a file edited, truncated or deleted by hand: the save itself is atomic)
    raises CorruptFileError naming the file.
    """
    directory = Path(directory)
    remedy = (f"the saved training state {directory} is damaged: restore it from a copy, or delete it "
              "to restart the run from round 0")
    info = read_json_file(directory / STATE_FILE, remedy)
    if not isinstance(info, dict) or not {"round", "nfe", "params", "optimizer", "strategy"} <= set(info):
        raise CorruptFileError(f"{directory / STATE_FILE} lacks round/nfe/params/optimizer/strategy; {remedy}")
    ema_path = directory / "ema.safetensors"
    ema = load_safetensors(ema_path, remedy) if ema_path.is_file() else {}
    return (load_safetensors(directory / "trainable.safetensors", remedy),
            load_safetensors(directory / "optimizer.safetensors", remedy), ema, info)
