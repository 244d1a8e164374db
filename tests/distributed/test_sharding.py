"""Sharding, launch command lines and parameters of aegpo.distributed (no processes started)."""

from __future__ import annotations

import pytest
import torch

from aegpo import distributed
from aegpo.config import ParamsError, load_params
from aegpo.distributed import DistributedError, Launch, group_costs, shard_groups, split_indices


def test_groups_go_whole_largest_first_to_the_least_loaded_rank():
    # AEGPO's median split: four groups of 16 and four of 8 rollouts (costs ∝ sizes)
    sizes = [8, 16, 8, 16, 16, 8, 16, 8]
    shards = shard_groups([float(s) for s in sizes], 2)
    assert sorted(g for s in shards for g in s) == list(range(8))  # every group once, none split
    assert [sum(sizes[g] for g in s) for s in shards] == [48, 48]
    assert shards == [[0, 1, 4, 5], [2, 3, 6, 7]]  # the 16s (1, 3, 4, 6) alternate first, then the 8s
    assert shard_groups([float(s) for s in sizes], 2) == shards  # the same on every rank


def test_unequal_groups_balance_by_denoiser_evaluations_not_counts():
    shards = shard_groups([10.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2)
    assert shards == [[0], [1, 2, 3, 4, 5]]


def test_one_rank_gets_everything_and_too_many_ranks_are_refused():
    assert shard_groups([3.0, 2.0], 1) == [[0, 1]]
    with pytest.raises(DistributedError, match="3 ranks but only 2 prompt groups"):
        shard_groups([3.0, 2.0], 3)


def test_group_costs_count_rollout_steps_and_trained_transitions():
    prompt_index = torch.tensor([0, 0, 1, 1, 1])
    train_steps = torch.tensor([2, 2, 0, 1, 0])
    # group 0: 2 samples × 10 steps + 3 × 4 transitions; group 1: 3 × 10 + 3 × 1
    assert group_costs(prompt_index, train_steps, 10, 3.0, 2) == [32.0, 33.0]


def test_split_indices_cover_every_item_once():
    parts = [split_indices(7, 3, r).tolist() for r in range(3)]
    assert [i for p in parts for i in p] == list(range(7)) and max(map(len, parts)) - min(map(len, parts)) <= 1


def test_launch_commands_for_one_node_and_for_c10d_rendezvous():
    one = Launch(2).command(["aegpo.cli", "train"])
    assert "--standalone" in one and "--nproc-per-node=2" in one and one[-3:] == ["-m", "aegpo.cli", "train"]
    two = Launch(1, "2", "127.0.0.1:29400", "run-7", 1).command(["aegpo.cli", "train"])
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:29400", "--rdzv-id=run-7",
            "--node-rank=1"} <= set(two)
    with pytest.raises(DistributedError, match="needs --rdzv-endpoint"):
        Launch(1, "2").command(["aegpo.cli"])


def test_missing_rendezvous_host_is_named():
    with pytest.raises(DistributedError, match="'no-such-node.invalid'.*cannot be resolved"):
        Launch(1, "2", "no-such-node.invalid:29400").command(["aegpo.cli"])
    with pytest.raises(DistributedError, match="expected HOST:PORT"):
        Launch(1, "2", "node0").command(["aegpo.cli"])


def test_nproc_parameter_is_validated():
    assert load_params(None, ["train.nproc=auto"]).train.nproc == "auto"
    assert load_params(None, ["train.nproc=2"]).train.nproc == 2
    with pytest.raises(ParamsError, match="nproc"):
        load_params(None, ["train.nproc=0"])
    with pytest.raises(ParamsError, match="nproc"):
        load_params(None, ["train.nproc=many"])
    with pytest.raises(ParamsError, match="prompts_per_round"):
        load_params(None, ["train.nproc=4", "train.prompts_per_round=2"])
    with pytest.raises(ParamsError, match="dist_timeout"):
        load_params(None, ["train.dist_timeout=0"])


def test_more_ranks_than_devices_is_refused():
    with pytest.raises(DistributedError, match="CPU core"):
        distributed.check_devices(10_000, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DistributedError, match="no CUDA device"):
            distributed.check_devices(2, "cuda")


def test_nproc_changes_neither_the_run_fingerprint_nor_the_resume_check():
    from flows.round_io import run_fingerprint

    a, b = load_params(None, ["train.nproc=1"]), load_params(None, ["train.nproc=2", "train.dist_timeout=60"])
    assert run_fingerprint(a) == run_fingerprint(b)
