"""flows.progress: the round and profiling progress lines the Prefect logger carries."""

from __future__ import annotations

from flows.progress import RoundProgress, duration, eta, step_logger
from flows.tasks import evaluate_policy, finish_round, generate_rollouts, score_rewards, sync_run, update_policy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_and_eta():
    assert [duration(s) for s in (0, 42.4, 185, 3720)] == ["0s", "42s", "3m05s", "1h02m"]
    assert eta(10.0, 0, 5) == "?" and eta(10.0, 2, 5) == "15s" and eta(10.0, 5, 5) == "0s"


def test_round_lines_count_this_sessions_pace():
    clock = Clock()
    progress = RoundProgress(first_round=10, rounds=20, clock=clock)  # resumed at round 10
    clock.now += 30.0  # two rounds in 30 s: 15 s a round, 8 rounds left
    line = progress.line(11, 0.3125, 12345, {"strict": 0.5, "dense": 0.7, "reward": 0.6})
    assert line == "round 12/20: reward 0.3125, NFE 12,345, 30s elapsed, ETA 2m00s, eval strict 0.500, eval dense 0.700"
    probed = progress.line(11, 0.3125, 12345, probe_nfe=320)  # the lazy base profile's new prompts, ΔEntropy probes
    assert probed == "round 12/20: reward 0.3125, NFE 12,345, 30s elapsed, ETA 2m00s, entropy probes 320 NFE"
    rejected = progress.line(12, None, 12400, None, "reward: 1 of 6 values are NaN or inf")
    assert rejected.startswith("round 13/20: rejected (reward: 1 of 6 values are NaN or inf), NFE 12,400")


def test_step_logger_logs_each_quarter_once():
    clock, lines = Clock(), []
    report = step_logger("base-entropy profile", "prompts", lines.append, every=0.25, clock=clock)
    for done in range(64, 1001, 64):
        clock.now += 1.0
        report(min(done, 1000), 1000)
    report(1000, 1000)  # again: the end is logged once
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["26%", "51%", "77%", "100%"]
    assert lines[0] == "base-entropy profile: 26% (256/1,000 prompts), 4s elapsed, ETA 12s"


def test_task_runs_are_named_by_round_and_stage():
    from prefect._internal.engine import resolve_custom_task_run_name

    rollouts = {"round": 7}
    names = [resolve_custom_task_run_name(generate_rollouts, {"session": None, "round_idx": 7}),
             resolve_custom_task_run_name(score_rewards, {"session": None, "rollouts": rollouts}),
             resolve_custom_task_run_name(update_policy, {"session": None, "rollouts": rollouts, "scores": {}}),
             resolve_custom_task_run_name(evaluate_policy, {"session": None, "label": "round-0008", "rounds_done": 8}),
             resolve_custom_task_run_name(finish_round, {"session": None, "round_idx": 7, "evaluation": None}),
             resolve_custom_task_run_name(sync_run, {"session": None, "round_idx": 7})]
    assert names == ["generate-rollouts-r0007", "score-rewards-r0007", "update-policy-r0007",
                     "evaluate-policy-round-0008", "finish-round-r0007", "sync-run-r0007"]
