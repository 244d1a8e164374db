"""`model.device` to a torch device."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when available, else cpu; any other name as torch spells it (cpu, cuda, cuda:1, ...)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
