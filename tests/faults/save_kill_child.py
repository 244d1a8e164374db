"""A fork server for the kill -9 tests: imports torch and aegpo once, then runs each job in a forked child.

Reads one JSON job per line on stdin: {"project": DIR, "base": DIR, "kill_at": N, "after": bool,
"overrides": [...]}. The child runs `aegpo train`'s Trainer on the tiny settings; when `kill_at` > 0 it
sends itself SIGKILL at its N-th os.replace/os.rename (just before the call, or just after it when
`after`), a real kill -9 in the middle of a save. Answers one JSON line per job:
{"status": "ok" | "killed" | "failed", "renames": calls seen,
"start_round": the round the trainer started (resumed) at}.
The server itself runs no tensor code, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import torch

from aegpo.config import load_params
from aegpo.trainer import Trainer

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]


def tiny_params(base: str, overrides: list[str]):
    return load_params(None, [
        f"model.checkpoint={base}", "train.out_dir=run", "train.rounds=2", "train.prompts_per_round=2",
        "train.group_size=3", "sampler.num_steps=4", "eval.num_steps=3", "train.eval_every=0", "train.save_every=1",
        "model.lora.rank=4", "entropy.layers=[0]", "aegpo.peaks_k=2", "train.ema_decay=0.5", "train.eval_base=false",
        *overrides])


def child(job: dict, counter_path: str) -> None:
    calls = 0

    def counting(real):
        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            with open(counter_path, "w") as f:
                f.write(str(calls))
            kill = calls == job.get("kill_at", 0)
            if kill and not job.get("after"):
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if kill:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    os.replace, os.rename = counting(os.replace), counting(os.rename)
    trainer = Trainer(tiny_params(job["base"], job.get("overrides", [])), TRAIN, None, project_dir=job["project"],
                      progress=False)
    with open(os.path.join(job["project"], ".start"), "w") as f:
        f.write(str(trainer.round))  # the round it resumed at: completed rounds are not computed again
    trainer.run()


def main() -> None:
    torch.set_num_threads(1)  # every child computes alike (bit-identical runs)
    for line in sys.stdin:
        job = json.loads(line)
        counter = os.path.join(job["project"], ".renames")
        os.makedirs(job["project"], exist_ok=True)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(job, counter)
            except BaseException:  # noqa: BLE001 - reported to the test through the exit code
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        renames = int(open(counter).read()) if os.path.exists(counter) else 0
        start_file = os.path.join(job["project"], ".start")
        start = int(open(start_file).read()) if os.path.exists(start_file) else None
        for path in (counter, start_file):
            if os.path.exists(path):
                os.unlink(path)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            result = "killed"
        else:
            result = "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "failed"
        print(json.dumps({"status": result, "renames": renames, "start_round": start}), flush=True)


if __name__ == "__main__":
    main()
