"""The real-model path end to end on CPU, as a new user would take it with no weights at hand.

`aegpo tiny` writes a tiny SD3 pipeline, a tiny FLUX pipeline and a tiny PickScore folder (real
diffusers/transformers classes, random weights from configs); each pipeline is then trained with the
PickScore reward for 2 rounds through `aegpo pipeline train` (Prefect + MLflow, the session's real
servers) and through `dvc exp run -S …` in a git copy of the project, using exactly the overrides
`aegpo tiny` printed, on 2 ranks where `train.nproc` exists (see NPROC). The `dvc exp run` tests are
`slow` (a few minutes: DVC starts a process per stage).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import subprocess

import pytest
import yaml
from mlflow import MlflowClient

from aegpo.checkpoint import read_manifest
from aegpo.cli import main
from aegpo.config import TrainParams

from pipeline_helpers import EVAL_PROMPTS, REPO, TRAIN_PROMPTS, VENV_BIN

# A small aegpo run: 2 rounds of 2 prompts (groups of 4 and 2 rollouts), 4 sampler steps, one eval image per
# prompt, evaluated before round 0 and after round 2.
RUN = ["train.prompts=data/small/train.txt", "eval.prompts=data/small/eval.txt", "train.strategy=aegpo",
       "train.rounds=2", "train.prompts_per_round=2", "train.group_size=3", "train.eval_every=2",
       "sampler.num_steps=4", "eval.num_steps=2", "eval.samples_per_prompt=1", "model.lora.rank=2",
       "aegpo.peaks_k=2", "aegpo.high_group=4", "aegpo.low_group=2", "aegpo.floor=2", "aegpo.ceiling=4"]
# 2 ranks (one prompt group each) once `train.nproc` exists: it comes with the torch.distributed work of issue 11,
# developed beside this test; until that is merged the runs are single-process. The test ids say which.
NPROC = 2 if "nproc" in TrainParams.model_fields else 1
RUN += [f"train.nproc={NPROC}"] if NPROC > 1 else []
KINDS = [pytest.param(kind, id=f"{kind}-{NPROC}rank{'s' if NPROC > 1 else ''}") for kind in ("sd3", "flux")]


def _in_project(project, tiny: dict[str, tuple], *kinds: str) -> list[str]:
    """Copy the tiny folders of `kinds` to <project>/models/<kind>; their overrides with project-relative paths."""
    out = []
    for kind in kinds:
        folder, overrides = tiny[kind]
        shutil.copytree(folder, project / "models" / kind)
        relative = [o.replace(str(folder), f"models/{kind}") for o in overrides]
        assert relative != overrides, overrides  # the folder's path was in the overrides
        out += relative
    return out


def _tiny(kind: str, out) -> list[str]:
    """Run `aegpo tiny --kind KIND --out OUT`; return the -S overrides of the `aegpo pipeline train` it prints."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["tiny", "--kind", kind, "--out", str(out)]) == 0
    printed = buf.getvalue()
    assert (out / ("model_index.json" if kind != "pickscore" else "model.safetensors")).is_file(), printed
    [line] = [ln for ln in printed.splitlines() if ln.strip().startswith("aegpo pipeline train")]
    argv = shlex.split(line)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{kind: (folder, overrides)} for the tiny sd3, flux and pickscore folders written by `aegpo tiny`."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: (root / kind, _tiny(kind, root / kind)) for kind in ("sd3", "flux", "pickscore")}


def _write_prompts(project) -> None:
    (project / "data" / "small").mkdir(parents=True, exist_ok=True)
    (project / "data" / "small" / "train.txt").write_text("\n".join(TRAIN_PROMPTS[:4]) + "\n")
    (project / "data" / "small" / "eval.txt").write_text("\n".join(EVAL_PROMPTS) + "\n")


def _check_run(run_dir, kind: str) -> None:
    """Round records, checkpoint and reports of a finished 2-round pickscore run of `kind`."""
    records = [json.loads((run_dir / "rounds" / f"round-{r:04d}.json").read_text()) for r in range(2)]
    for rec in records:
        assert "reward_pickscore" in rec and not any(k.startswith(("reward_strict", "reward_dense")) for k in rec)
        assert sum(p["group_size"] for p in rec["per_prompt"]) == 6
    # Round 0's policy is the base (ΔEntropy 0 for both prompts: equal groups); then AEGPO's split, high 4 / low 2.
    assert sorted(p["group_size"] for p in records[1]["per_prompt"]) == [2, 4]
    assert set(records[1]["eval"]["metrics"]) >= {"pickscore"} and "strict" not in records[1]["eval"]
    for r in range(2):  # each rank stored its rollout-table shard of the round
        tables = sorted(p.name for p in (run_dir / "rounds" / f"round-{r:04d}").glob("rollouts*.parquet"))
        assert tables == ([f"rollouts-rank-{i:02d}.parquet" for i in range(NPROC)] if NPROC > 1
                          else ["rollouts.parquet"]), tables
    manifest = read_manifest(run_dir / "checkpoint")
    assert manifest["form"] == "lora" and manifest["policy"]["kind"] == kind


@pytest.mark.parametrize("kind", KINDS)
def test_aegpo_pipeline_train_with_pickscore(kind, tiny_models, prefect_api, mlflow_db, tmp_path, monkeypatch,
                                             capsys):
    project = tmp_path / "project"
    _write_prompts(project)
    shutil.copy(REPO / "params.yaml", project / "params.yaml")  # the shipped parameters, as a user starts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_db)
    # Paths relative to the project (not to this process's working folder), as docs/models.md writes them.
    overrides = [*_in_project(project, tiny_models, kind, "pickscore"), *RUN]
    rc = main(["pipeline", "train", "--project-dir", str(project), "--reports", "reports",
               *[a for o in overrides for a in ("-S", o)]])
    out, err = capsys.readouterr()
    assert rc == 0, out + err  # the flow's log (stderr) holds a failed rank's error
    assert "eval pickscore:" in out and "(base) ->" in out and "strict" not in out, out

    [run_dir] = list((project / "runs" / "train").iterdir())
    _check_run(run_dir, kind)
    with open(project / "reports" / "eval_curve.csv") as f:
        curve = list(csv.DictReader(f))
    assert [int(r["rounds_done"]) for r in curve] == [0, 2] and all(r["pickscore"] for r in curve)
    metrics = json.loads((project / "reports" / "train_metrics.json").read_text())
    assert set(metrics["base_eval"]) == {"reward", "pickscore"}

    client = MlflowClient(mlflow_db)
    experiment = client.get_experiment_by_name("aegpo").experiment_id
    [parent] = [r for r in client.search_runs([experiment]) if r.data.tags.get("aegpo.kind") == "training"]
    run_id = parent.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "reward/pickscore")] == [0, 1]
    assert sorted(m.step for m in client.get_metric_history(run_id, "eval/pickscore")) == [0, 2]
    assert parent.data.params["model.kind"] == kind and parent.data.params["reward.name"] == "pickscore"


def _git_project(root) -> None:
    """A git repository holding a copy of this project's pipeline: code, dvc.yaml, params.yaml, base checkpoint."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("aegpo", "flows", "checkpoints/shapes-base", ".dvc"):
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    _write_prompts(root)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "project copy"]):
        subprocess.run(["git", "-c", "commit.gpgsign=false", *cmd], cwd=root, check=True, env=_git_env())


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost"}


@pytest.mark.slow  # ≈ 2.5 min per kind on 2 busy cores: each of 4 stages is a fresh process
@pytest.mark.parametrize("kind", KINDS)
def test_dvc_exp_run_with_pickscore(kind, tiny_models, prefect_server, mlflow_db, tmp_path):
    repo = tmp_path / "repo"
    _git_project(repo)
    overrides = [*tiny_models[kind][1], *tiny_models["pickscore"][1], *RUN]
    # The stages run `python -m aegpo.cli …` in the copy: the venv's python, the copy's code, the test servers.
    env = {**_git_env(), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo),
           "PREFECT_API_URL": prefect_server, "MLFLOW_TRACKING_URI": mlflow_db, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(VENV_BIN / "dvc"), "exp", "run", *[a for o in overrides for a in ("-S", o)]],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    params = yaml.safe_load((repo / "params.yaml").read_text())  # DVC wrote the overrides into params.yaml
    assert params["model"]["kind"] == kind and params["reward"]["weights"] == {"pickscore": 1.0}
    [run_dir] = list((repo / "runs" / "train").iterdir())
    _check_run(run_dir, kind)
    evaluation = json.loads((repo / "reports" / "eval.json").read_text())  # the evaluate stage's DVC metrics
    assert set(evaluation) == {"reward", "pickscore", "eval_nfe"}, evaluation
    base = json.loads((repo / "reports" / "train_metrics.json").read_text())["base_eval"]  # the train stage's
    assert set(base) == {"reward", "pickscore"}, base
    assert read_manifest(repo / "artifacts" / "train" / "checkpoint")["policy"]["kind"] == kind
    exps = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=repo, capture_output=True, text=True, check=True)
    assert exps.stdout.strip(), "dvc exp run recorded no experiment"
