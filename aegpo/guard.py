"""Non-finite guard: a round whose reward, advantages, loss, gradients or weights hold NaN/inf is rejected.

Real reward models in bf16 return an inf or a NaN now and then; one of them in a round's advantages makes
every LoRA element NaN after the optimizer step. The trainer therefore takes a `RoundSnapshot` of the
trainable weights and the optimizer state before it updates, checks every value that flows into the update
(`require_finite`), and on a `NonFiniteRound` restores the snapshot: nothing non-finite reaches the
resumable state or a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch


class NonFiniteRound(RuntimeError):
    """A value of the round (reward, advantage, loss, gradient, weight) is NaN or inf; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RoundsRejectedError(RuntimeError):
    """Too many consecutive rounds were rejected: the run stops instead of training on garbage."""


def count_nonfinite(values: torch.Tensor | np.ndarray) -> int:
    if isinstance(values, torch.Tensor):
        return int((~torch.isfinite(values.detach())).sum())
    return int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())


def require_finite(what: str, values: torch.Tensor | np.ndarray) -> None:
    """Raise NonFiniteRound naming `what` and how many of its values are NaN/inf."""
    bad = count_nonfinite(values)
    if bad:
        raise NonFiniteRound(f"{what}: {bad} of {int(np.prod(values.shape))} values are NaN or inf")


class RoundSnapshot:
    """Copies of the trainable weights and the optimizer state, taken at the start of an update.

    The copies live on `device` (default: where the weights are); for full fine-tuning of a large model pass
    "cpu" so the snapshot costs host memory instead of accelerator memory.
    """

    def __init__(self, named: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                 device: str | torch.device | None = None) -> None:
        self.named, self.optimizer = named, optimizer
        self.weights = {n: p.detach().to(device, copy=True) for n, p in named.items()}
        # (copy, original device) per tensor: AdamW keeps `step` on the CPU even for CUDA weights
        self.opt_state = {id(p): {k: ((v.detach().to(device, copy=True), v.device) if isinstance(v, torch.Tensor)
                                      else v) for k, v in optimizer.state[p].items()}
                          for p in named.values() if p in optimizer.state}

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.named.items():
            p.copy_(self.weights[name])
            p.grad = None
            saved = self.opt_state.get(id(p))
            if saved is None:
                self.optimizer.state.pop(p, None)  # the optimizer had no state for p before this update
            else:
                self.optimizer.state[p] = {k: (v[0].to(v[1], copy=True) if isinstance(v, tuple) else v)
                                           for k, v in saved.items()}

    def check_weights(self) -> None:
        for name, p in self.named.items():
            require_finite(f"weight {name}", p)
