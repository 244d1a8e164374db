"""dvc.yaml against params.yaml, the code and the reports it plots; `dvc plots show` renders them."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil

import pytest
import yaml

from aegpo.config import load_params
from aegpo.reports import write_reports
from pipeline_helpers import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _outs(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


def test_stage_params_are_keys_of_params_yaml():
    used = set()
    for name, stage in DVC["stages"].items():
        for key in stage.get("params", []):
            assert isinstance(key, str), f"{name}: params entries are dotted keys of params.yaml"
            assert _has_key(PARAMS, key), f"stage {name}: {key!r} is not a key of params.yaml"
            used.add(key.split(".")[0])
    assert used == set(PARAMS), f"params.yaml sections no stage reads: {sorted(set(PARAMS) - used)}"


def test_deps_exist_or_are_produced_and_commands_resolve():
    produced = {o for stage in DVC["stages"].values() for o in _outs(stage)}
    for name, stage in DVC["stages"].items():
        for dep in stage.get("deps", []):
            assert (REPO / dep).exists() or dep in produced, f"stage {name}: dependency {dep} is missing"
        for cmd in [stage["cmd"]] if isinstance(stage["cmd"], str) else stage["cmd"]:
            argv = shlex.split(cmd)
            assert argv[:2] == ["python", "-m"], cmd
            assert importlib.util.find_spec(argv[2]) is not None, f"stage {name}: no module {argv[2]}"
            overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
            load_params(REPO / "params.yaml", overrides)  # the overrides written in dvc.yaml are valid
    assert DVC["stages"]["pretrain"].get("frozen") is True
    assert {"prompts", "pretrain", "profile", "train", "evaluate"} == set(DVC["stages"])


# Round records of a shapes run and of a learned-reward run (pickscore): the plots must find their columns in both.
EVALS = {"shapes": ({"strict": 0.1, "dense": 0.3, "reward": 0.2, "metrics": ["strict", "dense", "reward"]},
                    {"strict": 0.2, "dense": 0.4, "reward": 0.3, "metrics": ["strict", "dense", "reward"]}),
         "pickscore": ({"pickscore": 19.0, "reward": 19.0, "metrics": ["reward", "pickscore"]},
                       {"pickscore": 20.0, "reward": 20.0, "metrics": ["reward", "pickscore"]})}
PARTS = {"shapes": {"reward_dense": 0.3, "reward_strict": 0.1}, "pickscore": {"reward_pickscore": 19.5}}


@pytest.fixture(params=sorted(EVALS))
def reports(tmp_path, request):
    """Reports written by aegpo.reports from two synthetic round records of the reward `request.param`."""
    base, final = EVALS[request.param]
    run = tmp_path / "run"
    (run / "rounds").mkdir(parents=True)
    (run / "eval_base.json").write_text(json.dumps(base))
    for r in range(2):
        record = {"round": r, "nfe": 100 * (r + 1), "reward_mean": 0.2 + r, "reward_std": 0.1,
                  **PARTS[request.param], "loss": 0.0, "kl": 0.0, "clip_frac": 0.1, "grad_norm": 1.0,
                  "per_prompt": [{"prompt": "a red circle", "prompt_id": 3, "group_size": 4, "reward_mean": 0.2,
                                  "reward_std": 0.1}],
                  "plan": {"delta_entropy": [0.05], "group_sizes": [4]},
                  **({"eval": final} if r == 1 else {})}
        (run / "rounds" / f"round-{r:04d}.json").write_text(json.dumps(record))
    write_reports(run, tmp_path / "reports", "aegpo")
    return tmp_path, request.param


def test_plots_and_metrics_refer_to_columns_the_reports_write(reports):
    folder, reward = reports
    for plot in DVC["plots"]:
        (props,) = plot.values()
        for path, columns in props["y"].items():
            header = (folder / path).read_text().splitlines()[0].split(",")
            for col in [props["x"], *([columns] if isinstance(columns, str) else columns)]:
                assert col in header, f"{path} has no column {col!r}"
    metrics = json.loads((folder / "reports" / "train_metrics.json").read_text())
    headline = EVALS[reward][1]["metrics"][0]
    assert metrics["eval"][headline] == EVALS[reward][1][headline] and metrics["nfe"] == 200
    assert metrics["base_eval"][headline] == EVALS[reward][0][headline]
    assert reward == "shapes" or not any("strict" in k or "dense" in k for k in (folder / "reports" / "eval_curve.csv")
                                         .read_text().splitlines()[0].split(","))


def test_dvc_plots_show_renders(reports, monkeypatch):
    from dvc.cli import main as dvc_main

    reports, _ = reports
    shutil.copy(REPO / "dvc.yaml", reports / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", reports / "params.yaml")
    monkeypatch.chdir(reports)
    assert dvc_main(["init", "--no-scm", "-q"]) == 0
    assert dvc_main(["plots", "show", "-o", "dvc_plots"]) == 0
    html = (reports / "dvc_plots" / "index.html").read_text()
    for title in ("Reward per round", "Eval reward", "Entropy allocation"):
        assert title in html
    assert '"delta_entropy": "0.05"' in html  # the report's data is embedded
