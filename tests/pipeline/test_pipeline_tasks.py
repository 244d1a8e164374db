"""The pipeline's tasks (called with `.fn`, no Prefect server): stage by stage through the store,
they train exactly what `Trainer.run()` trains, and log to MLflow without stray runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient

from aegpo.config import flatten
from aegpo.trainer import Trainer
from flows._prefect import is_transient
from flows.session import open_session
from flows.spec import prepare_run, read_prompts, run_tags
from flows.storage import StorageError
from flows.tasks import (
    _profile_cache_key,
    evaluate_policy,
    finish_round,
    generate_rollouts,
    profile_base_entropy,
    run_state,
    score_rewards,
    sync_run,
    update_policy,
)
from flows.tracking import Tracker


def _run_tasks(spec) -> None:
    with open_session(spec) as session:
        state = run_state.fn(session)
        if state["base_eval_due"]:
            evaluate_policy.fn(session, "base", 0)
        for r in range(state["round"], state["rounds"]):
            ro = generate_rollouts.fn(session, r)
            sc = score_rewards.fn(session, ro)
            up = update_policy.fn(session, ro, sc)
            ev = evaluate_policy.fn(session, f"round-{r + 1:04d}", r + 1) if up["eval_due"] else None
            finish_round.fn(session, r, ev)
            sync_run.fn(session, r)


@pytest.mark.slow  # a 3-round run through the tasks, and the trainer
def test_tasks_train_what_the_trainer_trains(make_project, mlflow_db):
    proj = make_project(rounds=2, eval_every=1, strategy="aegpo")
    spec = prepare_run("params.yaml", [], proj, tracking_uri=mlflow_db)
    profile = profile_base_entropy.fn(spec)
    assert profile["computed"] and profile["rows"] > 0
    spec = spec.model_copy(update={"base_profile_key": profile["key"]})
    tracker = Tracker(spec.tracking_uri, spec.experiment, (proj / "mlruns").as_uri())
    params = spec.params()
    run_id = tracker.start_training_run(spec.run_name, run_tags(spec, None), flatten(params), {})
    spec = spec.model_copy(update={"mlflow_run_id": run_id, "media_every": 1})
    _run_tasks(spec)

    direct = Trainer(params.model_copy(update={"train": params.train.model_copy(update={"out_dir": "direct"})}),
                     read_prompts(params, proj), read_prompts(params, proj, "eval"), project_dir=proj, progress=False)
    direct.run()
    from safetensors.torch import load_file

    piped = load_file(str(spec.run_path / "state" / "trainable.safetensors"))
    assert piped.keys() == direct.named_trainable.keys()
    for name, p in direct.named_trainable.items():
        assert torch.equal(piped[name], p.detach()), name

    run = spec.run_path
    for r in range(2):
        assert (run / "rounds" / f"round-{r:04d}" / "rollouts.parquet").is_file()
        assert not (run / "rounds" / f"round-{r:04d}" / "transitions.safetensors").exists()  # dropped once saved
    assert json.loads((run / "rounds" / "round-0001.json").read_text())["eval"]["strict"] >= 0

    client = MlflowClient(spec.tracking_uri)
    runs = client.search_runs([tracker.experiment_id])
    kinds = sorted(r.data.tags.get("aegpo.kind") for r in runs)
    assert kinds == ["evaluation"] * 3 + ["training"]  # base + 2 evaluations, no stray runs
    assert all(r.data.tags["mlflow.parentRunId"] == run_id for r in runs if r.info.run_id != run_id)
    assert [m.step for m in client.get_metric_history(run_id, "reward/mean")] == [0, 1]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/strict")) == [0, 1, 2]
    for key in ("entropy/delta_mean", "group_size/max", "policy/clip_frac", "policy/grad_norm", "nfe/cumulative",
                "time/sample_s", "steps/chosen_mean"):
        assert client.get_metric_history(run_id, key), key
    table = pd.read_json(client.download_artifacts(run_id, "tables/allocation.json", str(proj)), orient="split")
    assert sorted(set(table["round"])) == [0, 1] and {"prompt", "delta_entropy", "budget"} <= set(table.columns)
    assert client.list_artifacts(run_id, "plots/entropy_t") and client.list_artifacts(run_id, "images")

    # Evaluating the final checkpoint again gives what the run measured, so the flow may reuse it.
    from flows.evaluation import evaluate_checkpoint, prepare_eval

    espec = prepare_eval(str(run / "checkpoint"), "params.yaml", [], proj, tracking_uri=mlflow_db)
    fresh = evaluate_checkpoint.fn(espec, "fresh", reuse=False)
    reused = evaluate_checkpoint.fn(espec, "final")
    assert fresh["metrics"] == reused["metrics"] and fresh["parent_run_id"] == run_id
    rows = [pq.read_table(run / "evals" / label / "rows.parquet").drop(["label"]) for label in ("fresh", "final")]
    assert rows[0].equals(rows[1])
    assert ((run / "evals" / "fresh" / "images.png").read_bytes()
            == (run / "evals" / "final" / "images.png").read_bytes())
    assert client.get_run(reused["mlflow_run_id"]).data.tags["aegpo.reused"] == "True"


def test_a_failed_update_discards_the_trainer(make_project, mlflow_db, monkeypatch):
    proj = make_project(strategy="grpo")
    spec = prepare_run("params.yaml", [], proj, tracking_uri=mlflow_db)
    with open_session(spec) as session:
        ro = generate_rollouts.fn(session, 0)
        sc = score_rewards.fn(session, ro)
        first = session.trainer
        optimize = Trainer.optimize
        monkeypatch.setattr(Trainer, "optimize", lambda self, work: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            update_policy.fn(session, ro, sc)
        assert session.trainer is not first  # rebuilt from the saved state, not reused half-updated
        assert session.trainer.round == 0 and not session.in_flight
        with pytest.raises(RuntimeError, match="no policy update in this process"):
            finish_round.fn(session, 0, None)
        # what a Prefect retry does: the same task again, on the rebuilt trainer, from the stored stage outputs
        monkeypatch.setattr(Trainer, "optimize", optimize)
        assert update_policy.fn(session, ro, sc)["round"] == 0
        assert finish_round.fn(session, 0, None)["nfe"] > 0 and session.trainer.round == 1
        session.discard()
        assert _lock_probe(spec.run_path).returncode != 0  # the session holds the run folder, trainer or not
    assert _lock_probe(spec.run_path).returncode == 0  # given back at the end of the block


def _lock_probe(run_path) -> subprocess.CompletedProcess:
    """Another process trying to take the run folder's lock."""
    return subprocess.run([sys.executable, "-c", "import sys; from aegpo.run_lock import RunLock; "
                           "RunLock(sys.argv[1])", str(run_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_a_session_is_passed_by_reference_never_serialised(make_project):
    """Prefect records the round subflow's session parameter as a placeholder, without walking the trainer."""
    from flows.train import train_round

    proj = make_project(strategy="grpo")
    spec = prepare_run("params.yaml", [], proj, need_tracking=False)
    with open_session(spec) as session:
        trainer = session.trainer
        assert train_round.serialize_parameters({"session": session, "round_idx": 3}) == {
            "session": "<TrainingSession>", "round_idx": 3}
        assert train_round.validate_parameters({"session": session, "round_idx": 3})["session"] is session
        assert session.trainer is trainer


def test_profile_is_reused_and_keyed_on_what_changes_it(make_project):
    proj = make_project()
    spec = prepare_run("params.yaml", [], proj, need_tracking=False)
    first = profile_base_entropy.fn(spec)
    again = profile_base_entropy.fn(spec)
    assert first["computed"] and not again["computed"] and first["sha256"] == again["sha256"]
    key = _profile_cache_key(None, {"spec": spec})
    more_rounds = prepare_run("params.yaml", ["train.rounds=9", "train.optim.lr=0.1"], proj, need_tracking=False)
    other_probe = prepare_run("params.yaml", ["sampler.num_steps=5"], proj, need_tracking=False)
    other_seed = prepare_run("params.yaml", ["aegpo.probe_seed=7"], proj, need_tracking=False)
    assert _profile_cache_key(None, {"spec": more_rounds}) == key
    assert len({key, _profile_cache_key(None, {"spec": other_probe}),
                _profile_cache_key(None, {"spec": other_seed})}) == 3


def test_only_transient_errors_are_retried():
    class OutOfMemoryError(RuntimeError):
        pass

    assert is_transient(StorageError("unreachable", transient=True))
    assert not is_transient(StorageError("no bucket"))
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError(5, "EIO"))
    assert not is_transient(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_transient(RuntimeError("CUDA error: out of memory"))
    assert not is_transient(FileNotFoundError("x")) and not is_transient(ValueError("bad params"))
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = ConnectionError("reset")
    assert is_transient(wrapped)
