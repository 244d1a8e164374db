"""Fixtures of the fault tests: a TCP listener that accepts connections and never answers, and a tiny project."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest


@pytest.fixture
def hung_endpoint():
    """http://127.0.0.1:PORT of a server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


@pytest.fixture
def tiny_project(tiny_base, tmp_path):
    """make(rounds, train_extra="", eval_extra="") → a project folder `tmp_path/proj` for `aegpo train`
    subprocesses: two train prompts, one eval prompt, grpo on the tiny base (`train_extra` / `eval_extra`: more
    `key: value` pairs of those sections, each starting with ", ")."""
    return lambda rounds, train_extra="", eval_extra="": _write_project(tmp_path / "proj", tiny_base, rounds,
                                                                         train_extra, eval_extra)


def _write_project(proj: Path, tiny_base: Path, rounds: int, train_extra: str, eval_extra: str) -> Path:
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "train.txt").write_text("a red circle\ntwo blue squares\n")
    (proj / "data" / "eval.txt").write_text("a blue circle\n")
    (proj / "params.yaml").write_text(
        f"model: {{checkpoint: {tiny_base}, lora: {{rank: 4}}}}\nsampler: {{num_steps: 3}}\n"
        f"train: {{prompts: data/train.txt, strategy: grpo, rounds: {rounds}, prompts_per_round: 2, group_size: 2, "
        f"eval_every: 0{train_extra}, out_dir: runs/train}}\n"
        f"eval: {{prompts: data/eval.txt, num_steps: 2{eval_extra}}}\nentropy: {{layers: [0]}}\n")
    return proj
