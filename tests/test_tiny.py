"""`aegpo tiny`: the folders it writes load through the real paths, its overrides are valid, bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aegpo.cli import main
from aegpo.config import load_params
from aegpo.rewards.registry import reward_from_params
from aegpo.tiny import overrides, write_tiny
from aegpo.tiny.tokenizers import WORDS_FILE

REPO = Path(__file__).resolve().parents[1]


def test_vocabulary_ships_inside_the_package():
    assert WORDS_FILE.parent.name == "tiny" and WORDS_FILE.parent.parent.name == "aegpo" and WORDS_FILE.is_file()


def test_pickscore_folder_scores_through_the_reward_options(tmp_path, capsys):
    out = tmp_path / "models" / "pick"
    assert main(["tiny", "--kind", "pickscore", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "dvc exp run -S" in printed
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    # The printed overrides, applied to the shipped params.yaml (whose weights are the shapes reward's).
    params = load_params(REPO / "params.yaml", list(overrides("pickscore", "models/pick")))
    assert params.reward.name == "pickscore" and params.reward.weights == {"pickscore": 1.0}
    reward = reward_from_params(params, tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    result = reward(images, ["a red circle", "two blue squares"])
    assert set(result.parts) == {"pickscore"} and np.isfinite(result.score).all()
    assert result.score[0] != result.score[1]


def test_existing_folders_are_kept_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "pick"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["tiny", "--kind", "pickscore", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_tiny("pickscore", tmp_path / "file")
    with pytest.raises(ValueError, match="unknown tiny kind 'sdxl'"):
        write_tiny("sdxl", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    tiny = write_tiny("pickscore", out, overwrite=True)
    assert not (out / "mine.txt").exists() and "model.safetensors" in tiny.files


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_model_overrides_are_valid_params(kind):
    params = load_params(REPO / "params.yaml", [*overrides(kind, "models/my tiny"), *overrides("pickscore", "p")])
    assert params.model.kind == kind and params.model.pretrained.path == "models/my tiny"
    assert params.model.pretrained.resolution == 32 and params.entropy.layers == [0, 1]
