"""Helpers of tests/distributed: tiny projects, torchrun command lines, reading run folders.

A project's reward is JPEG size: graded even for the random tiny policy, so advantages and
updates are never all zero and equal weights mean equal maths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TRAIN_PROMPTS = ["a red circle", "two blue squares", "a green triangle left of a white square",
                 "a yellow circle and a red square", "a blue triangle", "two green circles"]
EVAL_PROMPTS = ["a blue circle", "two red triangles"]


def params_text(strategy: str = "aegpo", rounds: int = 3, **train: object) -> str:
    """A tiny run: 4 prompts per round (groups of 2 and 4 under aegpo), 4 sampler steps, JPEG-size reward,
    4 minibatches per round (so that a rank sometimes has no sample in one and pads); `train` overrides."""
    t = {"prompts": "data/train.txt", "strategy": strategy, "rounds": rounds, "prompts_per_round": 4, "group_size": 3,
         "eval_every": 0, "eval_base": "false", "out_dir": "runs/train", "micro_batch": 4, "optimizer_steps": 4,
         **train}
    return "\n".join([
        "seed: 0",
        "model: {checkpoint: base, lora: {rank: 4}, threads: 1}",
        "reward: {name: jpeg_incompressibility, weights: {jpeg_incompressibility: 1.0}}",
        # same_noise off: a group sharing its initial noise has near-identical images, and the JPEG-size reward is
        # a step function of the pixels; the all-reduce's summation order moves the weights by ~1e-9, which can
        # flip one byte of one JPEG in a later round and, through the tiny group std, the advantages
        # (docs/distributed.md, "What agrees to 1e-5"). Independent noise keeps the comparison about the maths.
        "sampler: {num_steps: 4, same_noise: false}",
        "train: {" + ", ".join(f"{k}: {v}" for k, v in t.items()) + "}",
        "entropy: {layers: [0]}",
        "eval: {prompts: data/eval.txt, num_steps: 3, samples_per_prompt: 2}",
        "aegpo: {peaks_k: 2, high_group: 4, low_group: 2, floor: 2, ceiling: 4}",
    ]) + "\n"


def write_project(proj: Path, base: Path, strategy: str = "aegpo", rounds: int = 3, **train: object) -> Path:
    """A project folder: prompts, a link to the tiny base checkpoint, params.yaml."""
    (proj / "data").mkdir(parents=True, exist_ok=True)
    (proj / "data" / "train.txt").write_text("\n".join(TRAIN_PROMPTS) + "\n")
    (proj / "data" / "eval.txt").write_text("\n".join(EVAL_PROMPTS) + "\n")
    if not (proj / "base").exists():
        (proj / "base").symlink_to(base)
    (proj / "params.yaml").write_text(params_text(strategy, rounds, **train))
    return proj


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def train_cmd(*args: str) -> list[str]:
    """One process: python -m aegpo.cli train ARGS."""
    return [sys.executable, "-m", "aegpo.cli", "train", *args]


def torchrun_cmd(nproc: int, *args: str, launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    """torchrun --nproc-per-node N -m aegpo.cli train ARGS."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc-per-node={nproc}",
            "-m", "aegpo.cli", "train", *args]


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout, check=False)


def run_ok(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    out = run(cmd, cwd, timeout)
    assert out.returncode == 0, (f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                                 f"{out.stderr[-5000:]}")
    return out


def trainable(proj: Path) -> dict[str, torch.Tensor]:
    return load_file(proj / "runs" / "train" / "state" / "trainable.safetensors")


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def records(proj: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((proj / "runs" / "train" / "rounds").glob("round-*.json"))]


def state_round(proj: Path) -> int:
    return json.loads((proj / "runs" / "train" / "state" / "state.json").read_text())["round"]


def assert_records_agree(a: list[dict], b: list[dict]) -> None:
    """Reward means, group sizes and explored steps per round are those of the other run."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra["round"] == rb["round"]
        assert abs(ra["reward_mean"] - rb["reward_mean"]) < 1e-6, (ra["round"], ra["reward_mean"], rb["reward_mean"])
        assert [p["group_size"] for p in ra["per_prompt"]] == [p["group_size"] for p in rb["per_prompt"]]
        assert ra["plan"].get("group_sizes") == rb["plan"].get("group_sizes")
        assert ra["sde_steps_per_sample"] == rb["sde_steps_per_sample"]
        assert ra["train_steps_per_sample"] == rb["train_steps_per_sample"]
        assert ra["plan"].get("chosen_steps") == rb["plan"].get("chosen_steps")  # the explored steps (aegpo)
        assert ra["num_samples"] == rb["num_samples"] and ra["nfe"] == rb["nfe"]


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)


def kill_all(proc: subprocess.Popen) -> None:
    """kill -9 of a launcher and every process under it (torchrun puts each rank in its own session)."""
    import os
    import signal

    pids = [proc.pid, *descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    for pid in pids[1:]:  # reap nothing (not our children) but wait until they are gone
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or "zombie" in _status(pid):
                break
            import time

            time.sleep(0.05)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until `path` exists (the run must still be going)."""
    import time

    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before {path} appeared"
        assert time.monotonic() < end, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for t in Path(f"/proc/{p}/task").iterdir()
                    for k in (t / "children").read_text().split()]
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the torchrun worker with RANK=rank."""
    for pid in descendants(launcher_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(e.startswith(b"LOCAL_RANK=") for e in environ):
            return pid
    raise AssertionError(f"no rank {rank} under {launcher_pid}")
