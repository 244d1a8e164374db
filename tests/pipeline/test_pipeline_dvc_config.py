"""dvc.yaml against params.yaml, the code and the reports it plots; `dvc plots show` renders them."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil

import pytest
import yaml

from aegpo.config import load_params
from flows.reports import write_reports

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
    return [next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]


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


@pytest.fixture
def reports(tmp_path):
    """Reports written by flows.reports from two synthetic round records."""
    run = tmp_path / "run"
    (run / "rounds").mkdir(parents=True)
    (run / "eval_base.json").write_text(json.dumps({"strict": 0.1, "dense": 0.3, "reward": 0.2}))
    for r in range(2):
        record = {"round": r, "nfe": 100 * (r + 1), "reward_mean": 0.2 + r, "reward_std": 0.1, "reward_dense": 0.3,
                  "reward_strict": 0.1, "loss": 0.0, "kl": 0.0, "clip_frac": 0.1, "grad_norm": 1.0,
                  "per_prompt": [{"prompt": "a red circle", "prompt_id": 3, "group_size": 4, "reward_mean": 0.2,
                                  "reward_std": 0.1}],
                  "plan": {"delta_entropy": [0.05], "group_sizes": [4]},
                  **({"eval": {"strict": 0.2, "dense": 0.4, "reward": 0.3}} if r == 1 else {})}
        (run / "rounds" / f"round-{r:04d}.json").write_text(json.dumps(record))
    write_reports(run, tmp_path / "reports", "aegpo")
    return tmp_path


def test_plots_and_metrics_refer_to_columns_the_reports_write(reports):
    for plot in DVC["plots"]:
        (props,) = plot.values()
        for path, columns in props["y"].items():
            header = (reports / path).read_text().splitlines()[0].split(",")
            for col in [props["x"], *([columns] if isinstance(columns, str) else columns)]:
                assert col in header, f"{path} has no column {col!r}"
    metrics = json.loads((reports / "reports" / "train_metrics.json").read_text())
    assert metrics["base_eval"]["strict"] == 0.1 and metrics["nfe"] == 200
    assert "eval" not in metrics  # the final accuracy is the evaluate stage's (reports/eval.json): one name each


# Round records of a shapes run and of a learned-reward run (pickscore): the plots must find their columns in both.
EVALS = {"shapes": ({"strict": 0.1, "dense": 0.3, "reward": 0.2, "metrics": ["strict", "dense", "reward"]},
                    {"strict": 0.2, "dense": 0.4, "reward": 0.3, "metrics": ["strict", "dense", "reward"]}),
         "pickscore": ({"pickscore": 19.0, "reward": 19.0, "metrics": ["reward", "pickscore"]},
                       {"pickscore": 20.0, "reward": 20.0, "metrics": ["reward", "pickscore"]})}
PARTS = {"shapes": {"reward_dense": 0.3, "reward_strict": 0.1}, "pickscore": {"reward_pickscore": 19.5}}


@pytest.mark.parametrize("reward", sorted(EVALS))
def test_plots_find_their_columns_whatever_the_reward(reward, tmp_path):
    base, final = EVALS[reward]
    run = tmp_path / "run"
    (run / "rounds").mkdir(parents=True)
    (run / "eval_base.json").write_text(json.dumps(base))
    for r in range(2):
        record = {"round": r, "nfe": 100 * (r + 1), "reward_mean": 0.2 + r, "reward_std": 0.1, **PARTS[reward],
                  "loss": 0.0, "kl": 0.0, "clip_frac": 0.1, "grad_norm": 1.0, "per_prompt": [],
                  "plan": {"delta_entropy": [0.05], "group_sizes": [4]}, **({"eval": final} if r == 1 else {})}
        (run / "rounds" / f"round-{r:04d}.json").write_text(json.dumps(record))
    write_reports(run, tmp_path / "reports", "aegpo")
    for plot in DVC["plots"]:
        (props,) = plot.values()
        for path, columns in props["y"].items():
            header = (tmp_path / path).read_text().splitlines()[0].split(",")
            for col in [props["x"], *([columns] if isinstance(columns, str) else columns)]:
                assert col in header, f"{reward}: {path} has no column {col!r}"
    header = (tmp_path / "reports" / "eval_curve.csv").read_text().splitlines()[0].split(",")
    assert set(header) == {"rounds_done", *base["metrics"]}  # the reward's metrics, no others
    train = json.loads((tmp_path / "reports" / "train_metrics.json").read_text())
    assert train["base_eval"] == {k: base[k] for k in base["metrics"]}


def test_each_metric_has_one_name_in_dvc_metrics_show(reports):
    """train_metrics.json and the evaluate stage's eval.json share no figure (e.g. base_eval.strict vs base_strict)."""
    from flows.evaluation import out_metrics

    train = json.loads((reports / "reports" / "train_metrics.json").read_text())
    assert set(train) == {"strategy", "rounds", "nfe", "reward_mean", "base_eval"}, sorted(train)
    assert set(train["base_eval"]) == {"strict", "dense", "reward"}
    result = {"metrics": {"strict": 0.3, "dense": 0.5, "reward": 0.4}, "eval_nfe": 800, "train_nfe": 9,
              "train_rounds": 2}
    assert set(out_metrics(result)) == {"strict", "dense", "reward", "eval_nfe"}


def test_dvc_plots_show_renders(reports, monkeypatch):
    from dvc.cli import main as dvc_main

    shutil.copy(REPO / "dvc.yaml", reports / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", reports / "params.yaml")
    monkeypatch.chdir(reports)
    assert dvc_main(["init", "--no-scm", "-q"]) == 0
    assert dvc_main(["plots", "show", "-o", "dvc_plots"]) == 0
    html = (reports / "dvc_plots" / "index.html").read_text()
    for title in ("Reward per round", "Eval reward", "Entropy allocation"):
        assert title in html
    assert '"delta_entropy": "0.05"' in html  # the report's data is embedded


def test_dvc_plots_show_needs_no_network(reports, monkeypatch):
    """The page carries Vega itself (.dvc/plots/offline.html, scripts/vendor_vega.py): no CDN, renders offline."""
    import re

    from dvc.cli import main as dvc_main
    from dvc_render.vega import VegaRenderer

    spec = importlib.util.spec_from_file_location("vendor_vega", REPO / "scripts" / "vendor_vega.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    cdn = dict(re.findall(r"npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert cdn == vendor.PACKAGES, "dvc-render moved to other Vega versions: rerun scripts/vendor_vega.py"

    shutil.copy(REPO / "dvc.yaml", reports / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", reports / "params.yaml")
    monkeypatch.chdir(reports)
    assert dvc_main(["init", "--no-scm", "-q"]) == 0
    shutil.copy(REPO / ".dvc" / "config", reports / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", reports / ".dvc" / "plots")
    assert dvc_main(["plots", "show", "-o", "dvc_plots"]) == 0
    html = (reports / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", html) and "cdn.jsdelivr" not in html
    for name, version in vendor.PACKAGES.items():
        assert f"/* {name} {version} */" in html
    assert html.count("vegaEmbed('#") == len(DVC["plots"]) and "Reward per round" in html


def test_checkpoint_json_changes_with_any_checkpoint_file(reports):
    """reports/checkpoint.json is what the evaluate stage depends on in place of the (cache-only) checkpoint."""
    run, out = reports / "run", reports / "reports"
    assert not (out / "checkpoint.json").exists()  # no checkpoint, no digest
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "manifest.json").write_text("{}")
    (run / "checkpoint" / "adapter.safetensors").write_bytes(b"\0" * 64)
    write_reports(run, out, "aegpo")
    first = json.loads((out / "checkpoint.json").read_text())
    assert sorted(first["files"]) == ["adapter.safetensors", "manifest.json"] and len(first["sha256"]) == 64
    (run / "checkpoint" / "adapter.safetensors").write_bytes(b"\0" * 63 + b"\1")
    write_reports(run, out, "aegpo")
    second = json.loads((out / "checkpoint.json").read_text())
    assert second["sha256"] != first["sha256"] and second["files"]["manifest.json"] == first["files"]["manifest.json"]
    assert "reports/checkpoint.json" in DVC["stages"]["evaluate"]["deps"]
    assert not any(d.startswith("artifacts/") for s in DVC["stages"].values() for d in s.get("deps", []))
