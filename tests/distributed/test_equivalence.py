"""The data-parallel property: N ranks train what one process trains (tests/distributed).

3 rounds under `torchrun --nproc-per-node 2` (gloo, one thread per rank) end within 1e-5 (max abs)
of a one-process run's trainable weights, with the same round records; a run killed with kill -9
mid-round resumes to the same weights; 2 nodes × 1 process meet through a c10d rendezvous.
"""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from flows.local_server import free_port

from dist_helpers import (
    assert_records_agree,
    kill_all,
    max_abs_diff,
    records,
    run_ok,
    start,
    state_round,
    torchrun_cmd,
    trainable,
    wait_for,
)

TOL = 1e-5


@pytest.mark.parametrize("strategy", ["aegpo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_two_ranks_train_what_one_process_trains(strategy, one_rank_reference, make_dist_project):
    ref = one_rank_reference(strategy)
    proj = make_dist_project(strategy=strategy)
    run_ok(torchrun_cmd(2), proj)
    diff = max_abs_diff(trainable(proj), trainable(ref))
    assert diff <= TOL, f"{strategy}: 2 ranks differ from 1 process by {diff:.3g}"
    assert max(abs(v).max() for v in trainable(proj).values()) > 0.05  # the LoRA B matrices did move from 0
    assert_records_agree(records(proj), records(ref))
    if strategy == "aegpo":  # unequal groups, so the ranks held different numbers of samples
        assert any(len(set(r["plan"]["group_sizes"])) > 1 for r in records(proj))


@pytest.mark.slow
def test_fsdp2_full_fine_tuning_on_two_ranks_trains_what_one_process_trains(one_rank_reference, make_dist_project):
    """train.data_parallel=fsdp (FSDP2 fully_shard per block; sharded weights and AdamW state, gathered to save):
    the same weights, optimizer state and checkpoint, also after resuming the sharded run."""
    ref = one_rank_reference("aegpo", "model.finetune=full")
    proj = make_dist_project()
    sets = ["-S", "model.finetune=full", "-S", "train.data_parallel=fsdp"]
    run_ok(torchrun_cmd(2, *sets, "-S", "train.rounds=2"), proj)
    run_ok(torchrun_cmd(2, *sets), proj)  # resumes the sharded state at round 2
    assert state_round(proj) == 3
    assert len(trainable(proj)) > 60  # every denoiser weight, not adapters
    assert max_abs_diff(trainable(proj), trainable(ref)) <= TOL
    for name in ("optimizer.safetensors",):
        assert max_abs_diff(load_file(proj / "runs/train/state" / name),
                            load_file(ref / "runs/train/state" / name)) <= TOL
    assert max_abs_diff(load_file(proj / "runs/train/checkpoint/denoiser.safetensors"),
                        load_file(ref / "runs/train/checkpoint/denoiser.safetensors")) <= TOL
    assert_records_agree(records(proj), records(ref))


@pytest.mark.slow
def test_a_two_rank_run_killed_mid_round_resumes_to_the_same_weights(one_rank_reference, make_dist_project, tmp_path):
    ref = one_rank_reference("aegpo")
    proj = make_dist_project()
    proc = start(torchrun_cmd(2), proj, tmp_path / "killed.log")
    wait_for(proj / "runs" / "train" / "state" / "state.json", proc)  # round 0 saved; kill in round 1
    kill_all(proc)  # kill -9 of torchrun and both ranks, mid round 1
    assert state_round(proj) in (1, 2)
    run_ok(torchrun_cmd(2), proj)
    assert state_round(proj) == 3
    assert max_abs_diff(trainable(proj), trainable(ref)) <= TOL
    assert_records_agree(records(proj), records(ref))


@pytest.mark.slow
def test_two_nodes_of_one_process_meet_through_c10d(one_rank_reference, make_dist_project, tmp_path):
    ref = one_rank_reference("aegpo")
    proj = make_dist_project()
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=t2n")
    nodes = [start(torchrun_cmd(1, launcher=launcher), proj, tmp_path / f"node{i}.log") for i in range(2)]
    for i, node in enumerate(nodes):
        assert node.wait(300) == 0, (tmp_path / f"node{i}.log").read_text()[-4000:]
    assert max_abs_diff(trainable(proj), trainable(ref)) <= TOL
    assert_records_agree(records(proj), records(ref))
