"""scripts/efficiency_ratio.py: per-seed NFE-to-target ratios across benchmark outputs; the longer of two copies of a
run wins; a reference that never reaches the target gives a bound; two different runs under one name stop it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADER = "strategy,seed,round,nfe,strict,dense,train_reward,wall_seconds,first_round_seconds\n"


def write(path: Path, rows: list[tuple[str, int, int, int, float]]) -> Path:
    path.write_text(HEADER + "".join(f"{s},{seed},{r},{n},{x},0.5,nan,0.0,1.0\n" for s, seed, r, n, x in rows))
    return path


def ratio(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts/efficiency_ratio.py"), "--target", "0.35",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_ratios_use_the_longer_reference_run_and_bound_the_seed_it_never_reaches(tmp_path):
    short = write(tmp_path / "a.csv", [
        ("grpo", 0, 0, 0, 0.30), ("grpo", 0, 5, 100, 0.32),
        ("grpo", 1, 0, 0, 0.30), ("grpo", 1, 5, 100, 0.31),
        ("aegpo", 0, 0, 0, 0.30), ("aegpo", 0, 5, 100, 0.40),  # crosses 0.35 at 50
        ("aegpo", 1, 0, 0, 0.30), ("aegpo", 1, 5, 100, 0.35),  # reaches it at 100
    ])
    long = write(tmp_path / "b.csv", [
        ("grpo", 0, 0, 0, 0.30), ("grpo", 0, 5, 100, 0.32), ("grpo", 0, 10, 200, 0.38),  # crosses at 150
        ("grpo", 1, 0, 0, 0.30), ("grpo", 1, 5, 100, 0.31), ("grpo", 1, 10, 200, 0.33),  # never
    ])
    done = ratio(short, long)
    assert done.returncode == 0, done.stderr
    assert "grpo: NFE to target 150 / — (last eval at 200 / 200)" in done.stdout
    # seed 0: 50 / 150; seed 1: below 100 / 200; means: 75 / more than (150 + 200) / 2
    assert "aegpo: NFE to target 50 / 100; ratio per seed 0.33 / < 0.50; ratio of the means < 0.429" in done.stdout


def test_two_different_runs_under_one_name_stop_it(tmp_path):
    a = write(tmp_path / "a.csv", [("grpo", 0, 0, 0, 0.30), ("grpo", 0, 5, 100, 0.32)])
    b = write(tmp_path / "b.csv", [("grpo", 0, 0, 0, 0.30), ("grpo", 0, 5, 100, 0.33), ("grpo", 0, 10, 200, 0.4)])
    done = ratio(a, b)
    assert done.returncode != 0
    assert "grpo seed 0 round 5 differs" in done.stderr
