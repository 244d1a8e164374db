"""A learned reward through every entry point: its `reward.models` options reach it, and reports print the
metrics it reports (no `strict`/`dense` outside the shapes reward)."""

from __future__ import annotations

import json

import pytest

from aegpo.cli import main
from aegpo.config import load_params
from aegpo.eval_metrics import before_after_lines, eval_summary, metric_names
from flows.reports import write_reports

from fixtures.tiny_rewards import clip_folder


@pytest.fixture(scope="module")
def pickscore_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pickscore") / "PickScore_v1"
    clip_folder(folder)
    return folder


def _overrides(tiny_base, pickscore_dir, out):
    eval_file = out.parent / "eval.txt"
    eval_file.write_text("a blue circle\ntwo red triangles\n")
    return ["-S", f"eval.prompts={eval_file}", "-S", f"model.checkpoint={tiny_base}", "-S", f"train.out_dir={out}",
            "-S", "train.rounds=1",
            "-S", "train.prompts_per_round=2", "-S", "train.group_size=4", "-S", "aegpo.high_group=4",
            "-S", "aegpo.low_group=4", "-S", "sampler.num_steps=3",
            "-S", "eval.num_steps=2", "-S", "eval.samples_per_prompt=1", "-S", "model.lora.rank=2",
            "-S", "entropy.layers=[0]", "-S", "train.strategy=grpo", "-S", "reward.name=pickscore",
            "-S", "reward.weights={pickscore: 1.0}", "-S", f"reward.models={{pickscore: {{path: {pickscore_dir}}}}}"]


def test_train_and_evaluate_with_pickscore_print_its_metrics(tiny_base, pickscore_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_overrides(tiny_base, pickscore_dir, out)]) == 0
    printed = capsys.readouterr().out
    assert "eval reward:" in printed and "eval pickscore:" in printed and "strict" not in printed
    base = json.loads((out / "eval_base.json").read_text())
    assert base["metrics"] == ["reward", "pickscore"] and "strict" not in base

    metrics = write_reports(out, tmp_path / "reports", "grpo")
    assert set(metrics["base_eval"]) == {"reward", "pickscore"}
    header = (tmp_path / "reports" / "eval_curve.csv").read_text().splitlines()[0]
    assert header == "rounds_done,reward,pickscore"

    result = tmp_path / "eval-result.json"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(result),
                 *_overrides(tiny_base, pickscore_dir, out)]) == 0
    assert capsys.readouterr().out.startswith("reward ")
    assert json.loads(result.read_text())["metrics"] == ["reward", "pickscore"]


def test_pipeline_run_spec_builds_the_learned_reward_with_its_options(tiny_base, pickscore_dir, tmp_path):
    from flows.spec import read_prompts

    overrides = [o for o in _overrides(tiny_base, pickscore_dir, tmp_path / "run") if o != "-S"]
    params = load_params("params.yaml", overrides)
    assert len(read_prompts(params, tmp_path.cwd(), "eval")) == 2  # no 'reward.models.pickscore' error


def test_metric_names_follow_the_reward():
    shapes = {"strict": 0.3, "dense": 0.5, "soft": 0.6, "reward": 0.4, "metrics": ["strict", "dense", "reward"],
              "nfe": 10, "num_prompts": 2}
    assert metric_names(shapes) == ["strict", "dense", "reward"]
    assert eval_summary(shapes, ("nfe",)) == {"strict": 0.3, "dense": 0.5, "reward": 0.4, "nfe": 10}
    learned = {"reward": 21.5, "pickscore": 21.5, "metrics": ["reward", "pickscore"]}
    lines = before_after_lines({"reward": 20.0, "pickscore": 20.0}, learned)
    assert lines == ["eval reward:    20.000 (base) -> 21.500 (trained)",
                     "eval pickscore: 20.000 (base) -> 21.500 (trained)"]
    old = {"strict": 0.3, "dense": 0.5, "reward": 0.4, "num_prompts": 200, "seed": 1, "nfe": 4}  # before `metrics`
    assert metric_names(old) == ["strict", "dense", "reward"]
    assert before_after_lines(None, learned) == []
