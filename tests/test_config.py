from pathlib import Path

import pytest
import yaml

from aegpo.cli import main
from aegpo.config import (
    BUILTIN,
    SHIPPED_DIFFERENCES,
    Params,
    ParamsError,
    apply_overrides,
    flatten,
    load_params,
    parse_override,
    shipped_differences,
    split_override,
)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_project_params_load():
    assert load_params(None) == load_params(BUILTIN) == Params()
    p = load_params(ROOT / "params.yaml")
    assert p.train.group_size >= 2


def test_shipped_params_depart_from_the_defaults_only_where_listed():
    differences = shipped_differences(load_params(ROOT / "params.yaml"))
    unlisted = {k: v for k, v in differences.items() if k not in SHIPPED_DIFFERENCES}
    assert not unlisted, f"params.yaml departs from aegpo/config.py's defaults (code, shipped): {unlisted}; " \
                         "change one of them or list the key with its reason in SHIPPED_DIFFERENCES"
    stale = set(SHIPPED_DIFFERENCES) - set(differences)
    assert not stale, f"SHIPPED_DIFFERENCES lists keys that no longer differ: {sorted(stale)}"
    assert all(len(reason) > 20 for reason in SHIPPED_DIFFERENCES.values())


def test_a_missing_params_file_is_an_error_unless_builtin_is_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "params file params.yaml does not exist" in err and "--params builtin" in err
    assert not out.exists()
    with pytest.raises(ParamsError, match="missing.yaml does not exist"):
        load_params(tmp_path / "missing.yaml")


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
                walk(ann)
    walk(Params)


def test_override_grammar_matches_dvc_exp_run_S():
    assert parse_override("train.rounds=5") == (["train", "rounds"], 5)
    assert parse_override("params.yaml:train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("entropy.layers=[0, 2]") == (["entropy", "layers"], [0, 2])
    assert parse_override("sampler.sde=flow") == (["sampler", "sde"], "flow")
    assert parse_override("sampler.same_noise=true") == (["sampler", "same_noise"], True)
    raw = apply_overrides({"train": {"rounds": 1}}, ["train.rounds=7", "model.lora.rank=4"])
    assert raw == {"train": {"rounds": 7}, "model": {"lora": {"rank": 4}}}
    p = load_params(ROOT / "params.yaml", ["train.rounds=7", "model.lora.rank=4", "train.optim.lr=0.001"])
    assert (p.train.rounds, p.model.lora.rank, p.train.optim.lr) == (7, 4, 0.001)


def test_hydra_prefixes_of_dvc_exp_run_S():
    """`+`/`++` set, `~` deletes (in order, with or without the file prefix), as `dvc exp run -S` takes them."""
    raw = {"reward": {"name": "shapes", "weights": {"dense": 0.5, "strict": 0.5}, "models": {}}}
    out = apply_overrides(raw, ["++reward.name=pickscore", "~reward.weights",
                                "params.yaml:+reward.weights={pickscore: 1}", "++reward.models.pickscore.path=models/p",
                                "~model.absent", "params.yaml:~reward.aggregate"])
    assert out == {"reward": {"name": "pickscore", "weights": {"pickscore": 1},
                              "models": {"pickscore": {"path": "models/p"}}}}
    assert raw["reward"]["weights"] == {"dense": 0.5, "strict": 0.5}  # the input is not changed
    assert apply_overrides({"a": {"b": 1}}, ["~a.b=1"]) == {"a": {}}
    assert split_override("params.yaml:++train.strategy=grpo") == ("++", "train.strategy=grpo")
    with pytest.raises(ParamsError, match="expected"):
        apply_overrides({}, ["params.json:+a.b=1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.group_sizee=4", "unknown key 'train.group_sizee'"),
        ("bogus=1", "unknown key 'bogus'"),
        ("train.group_size=1", "train.group_size"),
        ("train.group_size=many", "train.group_size"),
        ("train.timestep_fraction=1.5", "train.timestep_fraction"),
        ("sampler.sde=euler", "sampler.sde"),
        ("sampler.num_steps=1", "sampler.num_steps"),
        ("entropy.keys=image", "entropy.keys"),
        ("sampler.sde=cps", None),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override, message):
    if message is None:  # a valid override for contrast
        load_params(ROOT / "params.yaml", [override])
        return
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_params(ROOT / "params.yaml", [override])


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)
    with pytest.raises(ParamsError, match="key.sub=value"):
        load_params(None, ["train.rounds"])
    with pytest.raises(ParamsError, match="is a value"):
        load_params(ROOT / "params.yaml", ["seed.x=1"])


def test_flatten_covers_every_leaf_of_params_yaml():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and k != "weights":
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    flat = flatten(load_params(ROOT / "params.yaml"))
    assert set(leaves(raw)) <= set(flat)


@pytest.mark.parametrize("strategy", ["grpo", "aegpo_global"])
def test_a_timestep_fraction_of_zero_steps_fails_where_the_strategy_uses_it(strategy):
    with pytest.raises(ParamsError, match=r"train\.timestep_fraction: 0\.05 of 9 trainable steps is zero"):
        load_params(ROOT / "params.yaml", [f"train.strategy={strategy}", "train.timestep_fraction=0.05"])
    # aegpo and aegpo_local train their chosen steps, not a fraction: the same value is no error there
    assert load_params(ROOT / "params.yaml", ["train.timestep_fraction=0.05"]).train.strategy == "aegpo"


def test_each_strategy_validates_what_it_reads():
    root = ROOT / "params.yaml"
    with pytest.raises(ParamsError, match="train.strategy aegpo_local reads attention entropy"):
        load_params(root, ["train.strategy=aegpo_local", "entropy.record=false"])
    assert load_params(root, ["train.strategy=grpo", "entropy.record=false"]).entropy.record is False
    with pytest.raises(ParamsError, match=r"mixgrpo\.window: 9 > 4 explorable steps"):
        load_params(root, ["train.strategy=mixgrpo", "sampler.num_steps=5", "mixgrpo.window=9"])
    with pytest.raises(ParamsError, match=r"aegpo\.peaks_k: 5 steps cannot be chosen among the 4"):
        load_params(root, ["train.strategy=random_k", "sampler.num_steps=5", "aegpo.peaks_k=5"])
    with pytest.raises(ParamsError, match="unknown strategy 'ppo'"):
        load_params(root, ["train.strategy=ppo"])
