import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aegpo.cli import main
from aegpo.shapes.prompts import parse_prompt
from aegpo.shapes.render import render

from aegpo_testing import SHIPPED


def test_sample_writes_a_png(tiny_base, tmp_path):
    out = tmp_path / "x.png"
    assert main(["sample", "--checkpoint", str(tiny_base), "--prompt", "a red circle", "--out", str(out),
                 "--num", "2", "--steps", "3"]) == 0
    assert Image.open(out).size == (64, 32)


def test_evaluate_writes_strict_dense_and_rows(tiny_base, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(tiny_base), "--prompts", str(prompts), "--out", str(out),
                 "-S", "eval.num_steps=3"]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"strict", "dense", "rows"} and len(result["rows"]) == 2
    assert result["rows"][0]["prompt"] == "a red circle"


def test_score_rendered_images(tmp_path):
    prompts = ["a red circle", "two blue squares", "a green triangle left of a white square"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, p in enumerate(prompts):
        img = render(parse_prompt(p), rng)
        if i == 2:
            img = np.zeros_like(img)  # an empty image breaks every constraint
        Image.fromarray(img).save(imgs / f"{i:04d}.png")
    out = tmp_path / "s.json"
    assert main(["score", "--reward", "shapes", "--images", str(imgs), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["strict"] for r in rows] == [1.0, 1.0, 0.0]
    assert all({"score", "strict", "dense", "image", "prompt"} <= set(r) for r in rows)


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--params", str(SHIPPED), "--prompts", "nope.txt", "--out", "x.json"], "nope.txt does not exist"),
    (["train", "--params", str(SHIPPED), "-S", "train.group_size=1"], "train.group_size"),
    (["train"], "params file params.yaml does not exist (pass --params builtin"),
    (["sample", "--checkpoint", ".", "--prompt", "a red circle", "--out", "x.png"], "not an aegpo checkpoint"),
])
def test_bad_input_is_a_clear_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_bad_prompt_in_file_names_the_line(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\nfour red circles\n")
    (tmp_path / "imgs").mkdir()
    assert main(["score", "--images", str(tmp_path / "imgs"), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "line 2" in capsys.readouterr().err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "aegpo.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("pretrain", "train", "sample", "evaluate", "score"):
        assert cmd in out.stdout


def test_log_lines_name_the_prefect_run_they_come_from():
    import logging

    from aegpo.cli import RunNameFormatter

    fmt = RunNameFormatter("%(levelname)s %(name)s%(run)s: %(message)s")
    task = logging.LogRecord("prefect.task_runs", logging.INFO, __file__, 1, "Finished in state %s", ("Completed()",),
                             None)
    task.task_run_name, task.flow_run_name = "update-policy-r0005", "round-0005"
    flow = logging.LogRecord("prefect.flow_runs", logging.INFO, __file__, 1, "round 6/22", None, None)
    flow.flow_run_name = "round-0005"
    plain = logging.LogRecord("aegpo.trainer", logging.INFO, __file__, 1, "round 5: reward 0.3", None, None)
    assert fmt.format(task) == "INFO prefect.task_runs [update-policy-r0005]: Finished in state Completed()"
    assert fmt.format(flow) == "INFO prefect.flow_runs [round-0005]: round 6/22"
    assert fmt.format(plain) == "INFO aegpo.trainer: round 5: reward 0.3"
