"""Data-parallel runs on torch.distributed: one run is N ranks launched by torchrun.

    aegpo train --nproc 2                                  # this module builds the torchrun command
    torchrun --nproc-per-node 2 -m aegpo.cli train ...     # or torchrun directly
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m aegpo.cli train

What is split and what is shared:

- **Groups.** A round's prompt groups go to ranks whole (their advantages stay local), largest
  first, each to the rank with the fewest denoiser evaluations so far (`shard_groups`).
- **Noise.** Every sample's noise comes from (run seed, round, prompt position, rank in group),
  never from the process rank, so the samples do not depend on how many ranks drew them.
- **Gradients.** Summed over ranks: DDP over the trainable parameters (LoRA, or full fine-tuning
  of the built-in model), FSDP2 `fully_shard` for full fine-tuning of sd3/flux. The loss of a
  minibatch is normalised by the *global* number of its transitions, so N ranks compute the
  gradient one process computes, up to float rounding of the sum.
- **Writers.** Rank 0 alone writes state, checkpoints, round records and tracking; the others wait.

CPU runs use gloo, GPU runs NCCL (one GPU per rank, `cuda:LOCAL_RANK`). Every collective has a
timeout (`train.dist_timeout`): a rank that dies makes the others fail instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class DistributedError(RuntimeError):
    """A multi-process run cannot start or cannot go on (message names the setting to change)."""


# ----- the process group ------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """Whether this process is a torchrun worker (torchrun sets these for every rank)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and talks to trackers."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def check_devices(nproc: int, device: str) -> None:
    """Refuse a rank count larger than the devices of this node: GPUs for cuda, CPU cores for cpu."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise DistributedError(f"model.device={device} but no CUDA device is visible")
        count = torch.cuda.device_count()
        if nproc > count:
            raise DistributedError(f"train.nproc={nproc} ranks on this node but only {count} GPU(s) are visible "
                                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                                   f"use at most {count} or --nproc auto")
    else:
        cores = os.cpu_count() or 1
        if nproc > cores:
            raise DistributedError(f"train.nproc={nproc} CPU ranks on this node but it has {cores} CPU core(s); "
                                   f"use at most {cores}")


def init(device: str, timeout_s: float) -> torch.device:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU); returns this rank's device.

    Outside torchrun this is a no-op returning the device `device` names (one process).
    """
    if not launched_by_torchrun():
        return resolve_device(device)
    if is_initialized():
        return _rank_device(device)
    check_devices(local_world_size(), device)
    dev = _rank_device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # NCCL aborts a timed-out collective only with async error handling (the default since torch 2.2; set anyway)
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    log.info("rank %d of %d (%s, %s), collective timeout %.0f s", rank(), world_size(), backend, dev, timeout_s)
    return dev


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _rank_device(device: str) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is not None and world_size_env() > 1:
            raise DistributedError(f"model.device={device} pins one GPU, but a multi-rank run puts rank k on "
                                   "cuda:LOCAL_RANK: use model.device=cuda or auto")
        return torch.device("cuda", local_rank() if dev.index is None else dev.index)
    return dev


def rank_env() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun), before the group exists."""
    return int(os.environ.get("RANK", "0"))


def world_size_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (pickled inside our own process group only)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of a small CPU tensor (moved to the rank's device for NCCL)."""
    if world_size() == 1:
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    work = tensor.to(_comm_device())
    dist.all_reduce(work, op=ops[op])
    tensor.copy_(work.cpu() if tensor.device.type == "cpu" else work)
    return tensor


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@contextlib.contextmanager
def main_writes(what: str) -> Iterator[bool]:
    """`with main_writes("state") as mine:` rank 0 writes when `mine`; everyone waits until it is done."""
    try:
        yield is_main()
    finally:
        barrier()


# ----- sharding --------------------------------------------------------------------------------
def shard_groups(costs: Sequence[float], ranks: int) -> list[list[int]]:
    """Whole groups to ranks by greedy largest-first balancing of `costs` (one per group).

    Returns for each rank its group indices in increasing order. Ties go to the lower rank and
    the lower group index, so every rank computes the same assignment.
    """
    if ranks < 1:
        raise ValueError(f"shard_groups: ranks must be >= 1, got {ranks}")
    if len(costs) < ranks:
        raise DistributedError(f"{ranks} ranks but only {len(costs)} prompt groups per round: every rank needs a "
                               "whole group; raise train.prompts_per_round or lower train.nproc")
    load = [0.0] * ranks
    out: list[list[int]] = [[] for _ in range(ranks)]
    for g in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda k: (load[k], k))
        out[r].append(g)
        load[r] += float(costs[g])
    return [sorted(gs) for gs in out]


def group_costs(prompt_index: torch.Tensor, train_steps: torch.Tensor, num_steps: int, update_weight: float,
                num_groups: int) -> list[float]:
    """Denoiser evaluations of each group: rollout steps + `update_weight` × trained transitions.

    prompt_index (N,) sample → group; train_steps (N,) trained transitions per sample.
    """
    per_sample = num_steps + update_weight * train_steps.double()
    return torch.zeros(num_groups, dtype=torch.float64).index_add_(0, prompt_index, per_sample).tolist()


def split_indices(n: int, ranks: int, r: int) -> torch.Tensor:
    """Contiguous near-equal slice r of range(n) (for work with no groups: eval samples, probe prompts)."""
    bounds = np.linspace(0, n, ranks + 1).round().astype(int)
    return torch.arange(int(bounds[r]), int(bounds[r + 1]))


def split_and_gather(n: int, fn: Callable[[torch.Tensor], dict[str, Any]]) -> dict[str, Any]:
    """Run `fn(indices)` on this rank's slice of range(n); concatenate every rank's results in index order.

    `fn` returns a dict of arrays/tensors whose first dimension is len(indices), or of scalars that
    are summed (e.g. NFE). Every rank gets the whole result.
    """
    mine = split_indices(n, world_size(), rank())
    local = fn(mine)
    parts = all_gather_objects(local)
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if torch.is_tensor(first):
            out[key] = torch.cat(values)
        elif isinstance(first, np.ndarray):
            out[key] = np.concatenate(values)
        elif isinstance(first, list):
            out[key] = [v for vs in values for v in vs]
        elif first is None:
            out[key] = None
        else:
            out[key] = sum(values)
    return out


# ----- gradient synchronisation ----------------------------------------------------------------
class _Velocity(torch.nn.Module):
    """policy.velocity as a module, so DDP's hooks see the forward that makes the loss."""

    def __init__(self, policy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, x, sigma, cond):
        return self.policy.velocity(x, sigma, cond)


class GradSync:
    """How a rank's gradients are summed with the others' during `grpo.policy_update`.

    `velocity` is the forward to differentiate (through DDP for LoRA); `accumulate(last)` is the
    context of one micro-batch's backward: gradients are reduced only on the minibatch's last one.
    Every rank must run the same number of micro-batches per optimizer step (callers pad).
    Reduction averages over ranks, so `loss_scale` (= world size) turns the average into the sum.
    """

    def __init__(self, policy, mode: str) -> None:
        self.policy, self.mode = policy, mode
        self.world = world_size()
        self.loss_scale = float(self.world)
        self._ddp = None
        if mode == "ddp":
            # Ranks start from identical weights (same checkpoint, seeded LoRA init): no initial broadcast of the
            # frozen base (gigabytes for FLUX); buffers are not trained.
            import inspect

            from torch.nn.parallel import DistributedDataParallel as DDP

            no_buffers = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                          else {"broadcast_buffers": False})
            self._ddp = DDP(_Velocity(policy), device_ids=None, init_sync=False, **no_buffers)

    def velocity(self, x, sigma, cond):
        if self._ddp is not None:
            return self._ddp(x, sigma, cond)
        return self.policy.velocity(x, sigma, cond)

    @contextlib.contextmanager
    def accumulate(self, last: bool) -> Iterator[None]:
        if self._ddp is not None and not last:
            with self._ddp.no_sync():
                yield
        elif self.mode == "fsdp":
            for m in _fsdp_modules(self.policy.transformer):
                m.set_requires_gradient_sync(last, recurse=False)
            yield
        else:
            yield


def grad_sync_for(policy, mode: str) -> GradSync | None:
    """None on one rank; else DDP or FSDP2 (`fully_shard_transformer` already applied)."""
    if world_size() == 1:
        return None
    return GradSync(policy, mode)


def parallel_mode(choice: str, finetune: str, kind: str) -> str:
    """`train.data_parallel` resolved: auto = FSDP2 for full fine-tuning of the real models, DDP otherwise."""
    if world_size() == 1:
        return "none"
    if choice == "auto":
        return "fsdp" if finetune == "full" and kind in ("sd3", "flux") else "ddp"
    if choice == "fsdp" and finetune != "full":
        raise DistributedError("train.data_parallel=fsdp shards the whole denoiser: it needs model.finetune=full "
                               "(LoRA adapters are small: use ddp or auto)")
    return choice


def fully_shard_transformer(transformer: torch.nn.Module) -> None:
    """FSDP2 over each transformer block, then the root (the standard per-block wrapping of DiTs)."""
    from torch.distributed.fsdp import fully_shard

    blocks = [m for name, m in transformer.named_modules()
              if name.count(".") == 1 and name.split(".")[0] in ("transformer_blocks", "single_transformer_blocks")]
    for block in blocks:
        fully_shard(block)
    fully_shard(transformer)


def _fsdp_modules(module: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(module: torch.nn.Module) -> Iterator[None]:
    """FSDP2 weights gathered for sampling: ranks then run forwards independently (unequal batch counts)."""
    mods = _fsdp_modules(module)
    if not mods:
        yield
        return
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a collective: every rank calls it, in the same order), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `ref`: this rank's shard when `ref` is a DTensor (FSDP2), else `full` on its device."""
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(ref.device_mesh.device_type).to(ref.dtype), ref.device_mesh, ref.placements)
    return full.to(ref.device)


class FullOptimizerView:
    """An optimizer's state_dict with FSDP2-sharded state gathered now, on every rank (a collective), for
    `aegpo.train_state.save_state` on rank 0."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        sd = optimizer.state_dict()
        state = {pid: {k: full_tensor(v) if torch.is_tensor(v) else v for k, v in st.items()}
                 for pid, st in sorted(sd["state"].items())}
        self._sd = {"state": state, "param_groups": sd["param_groups"]}

    def state_dict(self) -> dict[str, Any]:
        return self._sd


class FullPolicyView:
    """The attributes of a policy that `checkpoint.save_trained` reads, with the full (gathered) denoiser state."""

    def __init__(self, policy, state: dict[str, torch.Tensor]) -> None:
        self.lora, self._policy, self._state = policy.lora, policy, state
        self.transformer = self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def describe(self):
        return self._policy.describe()


# ----- launching -------------------------------------------------------------------------------
@dataclass
class Launch:
    """How to start the ranks of one run on this node (torchrun's arguments)."""

    nproc: int
    nnodes: str = "1"  # "2" or an elastic "1:4"
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (several nodes)
    rdzv_id: str = "aegpo"
    node_rank: int | None = None

    def command(self, module_args: Sequence[str]) -> list[str]:
        """`python -m torch.distributed.run ... -m <module_args>` with this interpreter."""
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={self.nproc}"]
        if self.rdzv_endpoint:
            check_rendezvous_host(self.rdzv_endpoint)
            cmd += [f"--nnodes={self.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}",
                    f"--rdzv-id={self.rdzv_id}"]
            if self.node_rank is not None:
                cmd.append(f"--node-rank={self.node_rank}")
        else:
            if self.nnodes not in ("1", "1:1"):
                raise DistributedError(f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT (the c10d "
                                       "rendezvous every node reaches)")
            cmd.append("--standalone")  # one node: a free local port, no fixed address to collide on
        return [*cmd, "-m", *module_args]


def resolve_nproc(value: int | str, device: str) -> int:
    """`train.nproc` as a number: auto = the visible GPUs when the run is on GPU, else 1."""
    if value == "auto":
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        return max(1, torch.cuda.device_count()) if cuda and torch.cuda.is_available() else 1
    n = int(value)
    if n < 1:
        raise DistributedError(f"train.nproc must be >= 1 or auto, got {value}")
    return n


def check_rendezvous_host(endpoint: str) -> None:
    """Fail early and clearly when the rendezvous host does not resolve (torchrun would retry for minutes)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DistributedError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT, e.g. node0:29400")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port))
    except socket.gaierror as err:
        raise DistributedError(f"rendezvous host {host!r} (--rdzv-endpoint {endpoint}) cannot be resolved: {err}; "
                               "give the address of the node that hosts the rendezvous") from None
