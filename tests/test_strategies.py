import numpy as np
import pytest
import torch

from aegpo.entropy.profile import EntropyProfile
from aegpo.strategies.base import RoundContext
from aegpo.strategies.registry import STRATEGIES, build_strategy
from aegpo.tables import PROFILE_SCHEMA, read_table
from aegpo.trainer import Trainer

from aegpo_testing import shipped_params

TRAIN = ["a red circle", "two blue squares", "a green triangle left of a white square",
         "a yellow circle and a red square"]
EVAL = ["a blue circle", "two red triangles"]


def _params(tiny_base, tmp_path, strategy, *extra):
    return shipped_params([
        f"model.checkpoint={tiny_base}", f"train.out_dir={tmp_path / strategy}", f"train.strategy={strategy}",
        "train.rounds=1", "train.prompts_per_round=3", "train.group_size=3", "sampler.num_steps=5",
        "eval.num_steps=2", "train.eval_base=false", "model.lora.rank=2", "entropy.layers=[0, 1]",
        "aegpo.peaks_k=2", "mixgrpo.window=2", f"aegpo.cache_dir={tmp_path / 'cache'}", *extra])


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_runs_one_round(tiny_base, tmp_path, strategy):
    trainer = Trainer(_params(tiny_base, tmp_path, strategy), TRAIN, EVAL, progress=False)
    record = trainer.run_round()
    assert sum(p.group_size for p in record.per_prompt) == 9  # budget = 3 prompts × 3
    assert record.update.first_ratio_dev < 1e-5 and np.isfinite(record.update.loss)
    steps = {"grpo": (4, 2), "flow_grpo": (4, 4), "mixgrpo": (2, 2), "random_k": (2, 2),
             "aegpo_global": (4, 2), "aegpo_local": (2, 2), "aegpo": (2, 2)}[strategy]
    assert (record.sde_steps_per_sample, record.train_steps_per_sample) == steps
    if strategy in ("aegpo", "aegpo_local", "aegpo_global"):
        # this round's probe of the current policy + the lazy base probe of the 3 prompts it sees first
        assert record.probe_nfe == 2 * 3 * 5 and "base_entropy" in record.plan
        assert record.plan["base_probe_nfe"] == 3 * 5 and record.seconds_to_first_round > 0
    if strategy in ("aegpo", "aegpo_local"):
        assert all(len(s) == 2 and max(s) < 4 for s in record.plan["chosen_steps"])
    if strategy in ("aegpo", "aegpo_global"):
        assert len(record.plan["delta_entropy"]) == 3 and max(record.plan["delta_entropy"]) < 1e-5  # round 0:
        # policy = base


def test_base_profile_is_lazy_cached_per_prompt_and_matches_schema(tiny_base, tmp_path):
    t1 = Trainer(_params(tiny_base, tmp_path, "aegpo"), TRAIN, EVAL, progress=False)
    store = t1.base_profile_path
    assert not store.exists()  # nothing is probed before a round needs it
    r1 = t1.run_round()
    shards = sorted(store.glob("part-*.parquet"))
    assert len(shards) == 1 and read_table(shards[0], PROFILE_SCHEMA).num_rows == 3 * 5 * 2  # prompts × steps × layers
    assert t1.base_profile.computed_nfe == 15 and r1.plan["base_probe_nfe"] == 15
    mtime = shards[0].stat().st_mtime_ns
    t2 = Trainer(_params(tiny_base, tmp_path, "aegpo_local", "train.out_dir=" + str(tmp_path / "x")), TRAIN, EVAL,
                 progress=False)
    r2 = t2.run_round()  # same seed: the same 3 prompts, read from the store
    assert t2.base_profile_path == store and t2.base_profile.computed_nfe == 0 and shards[0].stat().st_mtime_ns == mtime
    assert r2.plan["base_probe_nfe"] == 15  # charged as a fresh run would pay, cached or not
    t3 = Trainer(_params(tiny_base, tmp_path, "aegpo", "aegpo.probe_seed=7", "train.out_dir=" + str(tmp_path / "y")),
                 TRAIN, EVAL, progress=False)
    assert t3.base_profile_path != store  # probe parameters are part of the key
    prof = EntropyProfile.from_table(read_table(shards[0], PROFILE_SCHEMA))
    seen = [p for p in TRAIN if p in prof.layers]
    np.testing.assert_allclose(prof.entropy_t(seen), t1.base_profile.entropy_t(seen), rtol=1e-6)


def _ctx(params, entropy, base):
    prompts = [f"p{i}" for i in range(len(entropy))]
    profile = EntropyProfile({p: np.asarray(b)[:, None] for p, b in zip(prompts, base)}, np.linspace(1, 0.1, 5), ["l0"])

    def probe(ps):
        class R:
            nfe = len(ps) * 5
            entropy = torch.tensor(np.asarray([entropy[prompts.index(p)] for p in ps]))
        return R()

    return RoundContext(0, prompts, list(range(len(prompts))), 5, np.random.default_rng(0), probe=probe,
                        base_profile=profile)


def test_aegpo_allocates_by_delta_entropy_and_explores_peaks(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path, "aegpo", "train.group_size=6", "aegpo.high_group=8", "aegpo.low_group=4",
                     "aegpo.peak_direction=high")  # the paper's maxima (the shipped file takes the minima)
    base = [[1.0, 1.0, 1.0, 1.0, 1.0]] * 4
    current = [[1.0, 3.0, 1.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0],
               [1.1, 1.0, 1.0, 1.0, 1.0]]
    plan = build_strategy(params).plan_round(_ctx(params, current, base))
    assert plan.group_sizes == [8, 4, 8, 4] and sum(plan.group_sizes) == 24
    assert plan.info["chosen_steps"][0] == [1, 3]  # top-2 of steps 0..3 (the last step is never explored)
    assert plan.probe_nfe == 20 + 20 and plan.info["base_probe_nfe"] == 20  # current probe + first-use base probe
    rel = build_strategy(_params(tiny_base, tmp_path, "aegpo_global", "aegpo.delta=relative")).plan_round(
        _ctx(params, current, [[0.5] * 5, [1.0] * 5, [4.0] * 5, [1.0] * 5]))
    np.testing.assert_allclose(rel.info["delta_entropy"][2], abs(2.0 - 4.0) / 4.0)


def test_mixgrpo_window_slides_and_rolls_back(tiny_base, tmp_path):
    params = _params(tiny_base, tmp_path, "mixgrpo", "mixgrpo.shift_every=2")
    s = build_strategy(params)
    assert [s.window_start(r, 5) for r in range(8)] == [0, 0, 1, 1, 2, 2, 0, 0]
