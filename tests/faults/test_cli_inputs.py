"""Hostile command-line input: bounded, checked before any heavy work, one line of error (no traceback)."""

from __future__ import annotations

import logging
import time

import pytest
from PIL import Image

from aegpo.cli import _check_sample_memory, main
from aegpo.prompt_files import read_prompt_file


def test_sample_scale_is_bounded_before_anything_is_loaded(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--checkpoint", str(tmp_path / "nothing"), "--prompt", "a red circle",
              "--out", str(tmp_path / "x.png"), "--scale", "5000"])
    assert info.value.code == 2
    assert "--scale: must be between 1 and 32, got 5000" in capsys.readouterr().err


def test_sample_memory_is_estimated_before_allocating():
    class Big:  # a 1024x1024 pipeline policy
        height, width, latent_shape = 1024, 1024, (16, 128, 128)

    with pytest.raises(ValueError, match=r"--num 64 --scale 32: the PNG would be .* GiB in memory"):
        _check_sample_memory(Big(), 64, 32)
    _check_sample_memory(Big(), 1, 4)  # 4096x4096: fine


def test_score_checks_the_image_size_before_decoding(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("1", (12000, 12000)).save(images / "0000.png")  # small file, 144 Mpixel image
    t0 = time.monotonic()
    code = main(["score", "--images", str(images), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert code == 2 and "0000.png is 12000x12000 pixels" in err and "downscale" in err
    assert time.monotonic() - t0 < 10 and not (tmp_path / "o.json").exists()


def test_score_names_an_image_that_is_not_an_image(tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red circle\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0000.png").write_bytes(b"\x89PNG truncated")
    code = main(["score", "--images", str(tmp_path / "images"), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o.json")])
    assert code == 2 and "0000.png is not a readable image" in capsys.readouterr().err


def test_a_huge_prompt_is_not_echoed_whole(tmp_path, capsys):
    huge = "x" * 3_600_000
    (tmp_path / "p.txt").write_text(f"a red circle\n{huge}\n")
    code = main(["score", "--images", str(tmp_path), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert code == 2 and "p.txt, line 2" in err
    assert len(err) < 3000 and "characters)" in err


def test_duplicate_prompts_are_reported(tmp_path, caplog):
    path = tmp_path / "eval.txt"
    path.write_text("a red circle\ntwo blue squares\na red circle\n")
    with caplog.at_level(logging.WARNING):
        assert read_prompt_file(path) == ["a red circle", "two blue squares", "a red circle"]
    assert any("1 duplicate prompt" in r.getMessage() and "line 3 repeats line 1" in r.getMessage()
               for r in caplog.records)


def test_unknown_bench_strategy_is_rejected_before_the_base_evaluation(tmp_path, capsys):
    t0 = time.monotonic()
    code = main(["bench", "efficiency", "--out", str(tmp_path / "b"), "--strategies", "grpo,foo"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown strategy 'foo'" in err and "aegpo_local" in err
    assert time.monotonic() - t0 < 5 and not (tmp_path / "b").exists()


@pytest.mark.parametrize("override, expected", [
    ("train.rounds=true", "train.rounds: Input should be a valid integer (got True)"),
    ("model.device=tpu", "model.device: String should match pattern"),
    ("train.optim.lr=.nan", "train.optim.lr"),
])
def test_bad_parameters_are_one_line_naming_the_key(tmp_path, capsys, override, expected):
    (tmp_path / "p.yaml").write_text("seed: 0\n")
    code = main(["train", "--params", str(tmp_path / "p.yaml"), "-S", override])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert expected in err


def test_out_dir_that_is_a_file_fails_before_any_work(tiny_base, tmp_path, capsys):
    (tmp_path / "runfile").write_text("not a folder")
    (tmp_path / "t.txt").write_text("a red circle\n")
    (tmp_path / "p.yaml").write_text("seed: 0\n")
    code = main(["train", "--params", str(tmp_path / "p.yaml"), "-S", f"model.checkpoint={tiny_base}",
                 "-S", f"train.out_dir={tmp_path / 'runfile'}",
                 "-S", f"train.prompts={tmp_path / 't.txt'}", "-S", f"eval.prompts={tmp_path / 't.txt'}"])
    err = capsys.readouterr().err
    assert code == 2 and f"train.out_dir {tmp_path / 'runfile'}: {tmp_path / 'runfile'} is a file, not a folder" in err
    assert (tmp_path / "runfile").read_text() == "not a folder"
