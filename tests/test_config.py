from pathlib import Path

import pytest
import yaml

from aegpo.config import (Params, ParamsError, apply_overrides, flatten, load_params, parse_override,
                          split_override)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_project_params_load():
    assert isinstance(load_params(None), Params)
    p = load_params(ROOT / "params.yaml")
    assert p.train.group_size >= 2


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
    p = load_params(None, ["train.rounds=7", "model.lora.rank=4", "train.optim.lr=0.001"])
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
        ("train.timestep_fraction=0.05", "train.timestep_fraction"),
        ("entropy.keys=image", "entropy.keys"),
        ("sampler.sde=cps", None),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override, message):
    if message is None:  # a valid override for contrast
        load_params(None, [override])
        return
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_params(None, [override])


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
