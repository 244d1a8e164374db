"""kill -9 at every rename of every save, then resume: the run ends bit-identical to an uninterrupted one.

A fork server (save_kill_child.py) imports torch once; each run is a forked child that SIGKILLs
itself at its N-th os.replace/os.rename. The tiny run (2 rounds, a save after each, EMA on) makes
8 renames: round record 0, state and checkpoint of round 1 (one rename each: nothing to back up),
round record 1, then state and checkpoint of round 2 (old → .old, new → name). Each is a kill
point before the call; the two final renames of a swap are also killed just after (the `.old`
litter phase). The resumed run must start at the last completely saved round (a completed round is
not computed again, no fresh start) and end bit-identical, with no `.tmp`/`.old` left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("save_kill_child.py")
REPO = Path(__file__).resolve().parents[2]


class ForkServer:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=REPO)

    def run(self, **job) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _outcome(run: Path) -> dict:
    """Everything a resumed run must reproduce: weights, optimizer, EMA, counters, round records."""
    out = {f"state/{f}": load_file(str(run / "state" / f))
           for f in ("trainable.safetensors", "optimizer.safetensors", "ema.safetensors")}
    out["checkpoint"] = load_file(str(run / "checkpoint" / "denoiser.safetensors"))
    info = json.loads((run / "state" / "state.json").read_text())
    out["info"] = {k: info[k] for k in ("round", "nfe", "strategy", "optimizer")}
    meta = json.loads((run / "checkpoint" / "aegpo_checkpoint.json").read_text())["meta"]
    out["checkpoint_meta"] = {k: meta[k] for k in ("round", "nfe")}
    out["rounds"] = sorted(p.name for p in (run / "rounds").iterdir())
    out["records"] = [{k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("seconds_")}
                      for p in sorted((run / "rounds").glob("round-*.json"))]
    return out


def _assert_same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict) and a[key] and all(torch.is_tensor(v) for v in a[key].values()):
            assert a[key].keys() == b[key].keys(), (where, key)
            for name in a[key]:
                assert torch.equal(a[key][name], b[key][name]), f"{where}: {key} {name} differs"
        else:
            assert a[key] == b[key], f"{where}: {key} differs"


def _litter(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith((".tmp", ".old")))


def test_kill_at_every_rename_of_every_save_resumes_bit_identical(tiny_base, tmp_path):
    server = ForkServer()
    try:
        ref = server.run(project=str(tmp_path / "ref"), base=str(tiny_base), kill_at=0)
        assert ref["status"] == "ok"
        total = ref["renames"]
        assert total == 8, f"the tiny run's save sequence changed ({total} renames): update the docstring"
        expected = _outcome(tmp_path / "ref" / "run")
        # kill point → the round the resumed run must start at (the last state saved completely)
        points = {(1, False): 0, (2, False): 0, (3, False): 1, (4, False): 1, (5, False): 1, (6, False): 1,
                  (7, False): 2, (8, False): 2, (6, True): 2, (8, True): 2}
        for (n, after), start in points.items():
            where = f"kill {'after' if after else 'before'} rename {n}"
            project = tmp_path / f"kill{n}{'a' if after else 'b'}"
            killed = server.run(project=str(project), base=str(tiny_base), kill_at=n, after=after)
            assert killed["status"] == "killed" and killed["renames"] == n, where
            resumed = server.run(project=str(project), base=str(tiny_base), kill_at=0)
            assert resumed["status"] == "ok", where
            assert resumed["start_round"] == start, f"{where}: resumed at round {resumed['start_round']}"
            _assert_same(expected, _outcome(project / "run"), where)
            assert _litter(project / "run") == [], where
    finally:
        server.close()
