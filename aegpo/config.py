"""Typed, validated parameters: `params.yaml` is the one place for hyperparameters.

`load_params(path, overrides)` reads the YAML file, applies `key.sub=value` overrides
(the grammar of `dvc exp run -S`: the value is parsed as YAML, an optional
`params.yaml:` prefix is accepted), and validates everything into frozen pydantic
models. An unknown key, a wrong type or an impossible value raises `ParamsError`
naming the dotted key and what is expected. Numbers are strict: `true` is not 1, "5" is not 5
(an int field takes an integer; a float field an integer or a decimal).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, StrictFloat, StrictInt, ValidationError, model_validator

from aegpo.config_base import Section
from aegpo.io_utils import shorten
from aegpo.models.pretrained_params import PretrainedParams
from aegpo.shapes.spec import MAX_SIZE, MIN_SIZE


class ParamsError(ValueError):
    """params.yaml or an override failed validation."""


class LoraParams(Section):
    rank: StrictInt = Field(16, ge=1, description="LoRA rank r.")
    alpha: StrictFloat = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    target_modules: tuple[str, ...] = Field(
        ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
        min_length=1,
        description="Names (suffixes) of the denoiser's linear layers that get adapters (Flow-GRPO's set).",
    )
    init: Literal["gaussian", "default", "pissa", "olora"] = Field(
        "gaussian", description="peft init_lora_weights; B starts at zero for gaussian/default, so step 0 = base."
    )


class ModelParams(Section):
    kind: str = Field("tiny_mmdit", description="Policy kind (aegpo.models.registry): tiny_mmdit, ...")
    checkpoint: str = Field("checkpoints/shapes-base", description="Base checkpoint folder (relative to the project).")
    finetune: Literal["lora", "full"] = Field(
        "lora", description="Train LoRA adapters (reference = adapters off) or every denoiser weight (reference = "
        "frozen copy).")
    lora: LoraParams = Field(default_factory=LoraParams, description="LoRA settings when finetune = lora.")
    guidance_scale: StrictFloat = Field(
        1.0, ge=1.0, description="Classifier-free guidance; 1 = none (one denoiser call per step).")
    pretrained: PretrainedParams = Field(
        default_factory=PretrainedParams, description="Real models (SD3.5, FLUX): where and how to load them (kinds "
        "sd3, flux).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
                        description="torch device: auto (cuda if available), cpu, cuda, cuda:N or mps.")
    threads: StrictInt = Field(0, ge=0, description="torch CPU threads; 0 = torch's default.")


class SamplerParams(Section):
    num_steps: StrictInt = Field(10, ge=2, le=1000, description="Denoising steps of a training rollout.")
    shift: StrictFloat = Field(
        1.0, gt=0, description="Time shift of the sigma schedule: σ = s·t / (1 + (s − 1)·t), t = linspace(1, 0).")
    sde: Literal["dance", "flow", "cps"] = Field(
        "dance", description="Stochastic step on exploring steps: DanceGRPO, Flow-GRPO or CPS (see aegpo/samplers.py).")
    noise_level: StrictFloat = Field(
        0.7, ge=0, le=5, description="η (dance), a (flow) or a (cps: std = σ_next·sin(aπ/2), a ≤ 1) of the SDE.")
    same_noise: bool = Field(
        True, description="All rollouts of one prompt start from the same initial noise (DanceGRPO's init_same_noise).")

    @model_validator(mode="after")
    def _check(self) -> SamplerParams:
        if self.sde == "cps" and self.noise_level > 1:
            raise ValueError("noise_level: CPS needs a in [0, 1] (std = σ_next·sin(aπ/2))")
        return self


class RewardParams(Section):
    name: str = Field("shapes", description="Reward (aegpo.rewards registry): shapes, ...")
    weights: dict[str, float] = Field(
        {"dense": 0.5, "strict": 0.5},
        description="Weights of the reward's parts; the reward is their weighted sum (shapes: dense, strict, soft: "
        "graded credit for almost-legal shapes).",
    )
    aggregate: Literal["sum", "advantage"] = Field(
        "sum", description="sum: advantages of the weighted reward; advantage: weighted sum of each part's "
        "group-normalised advantage (MixGRPO's advantage_aggr).")
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-reward-model options, e.g. {pickscore: {path: /models/PickScore_v1}}; "
        "each reward validates its own.")


class OptimParams(Section):
    lr: StrictFloat = Field(3e-4, gt=0, description="AdamW learning rate.")
    weight_decay: StrictFloat = Field(1e-4, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: StrictFloat = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: StrictFloat = Field(1.0, gt=0, description="Gradient norm clip before each optimizer step.")


class TrainParams(Section):
    prompts: str = Field("data/prompts/train.txt", description="Training prompt file, one per line.")
    strategy: str = Field(
        "grpo", description="Strategy (aegpo.strategies registry): where to explore and how many rollouts each prompt "
        "gets.")
    rounds: StrictInt = Field(45, ge=1, description="Rounds of sample → score → advantage → optimize.")
    prompts_per_round: StrictInt = Field(
        16, ge=1, description="Prompts drawn (without replacement, cycling) per round.")
    group_size: StrictInt = Field(
        12, ge=2, description="Rollouts per prompt under a uniform budget (the budget is prompts_per_round × "
        "group_size).")
    timestep_fraction: StrictFloat = Field(
        0.6, gt=0, le=1, description="grpo: fraction of the (non-final) steps trained per sample, chosen at random "
        "(DanceGRPO).")
    optimizer_steps: StrictInt = Field(
        2, ge=1, description="Optimizer steps per round; the round's samples are split into this many minibatches "
        "(gradient accumulation inside each).")
    micro_batch: StrictInt = Field(
        32, ge=1, description="Transitions per forward/backward pass (memory knob; does not change the maths).")
    inner_epochs: StrictInt = Field(4, ge=1, description="Passes over a round's samples.")
    clip_range: StrictFloat = Field(1e-3, gt=0, description="PPO ratio clip ε.")
    adv_clip_max: StrictFloat = Field(5.0, gt=0, description="Advantages are clipped to ±this.")
    std_floor: StrictFloat = Field(
        0.05, ge=0, description="Group std floor in the z-score (avoids blowing up tiny reward gaps).")
    kl_beta: StrictFloat = Field(
        0.0, ge=0, description="Weight of the KL to the reference policy (Flow-GRPO: ‖μθ − μref‖² / 2σ²); 0 = off.")
    optim: OptimParams = Field(default_factory=OptimParams, description="Optimizer.")
    ema_decay: StrictFloat = Field(
        0.0, ge=0, lt=1, description="EMA of trainable weights for evaluation/saving; 0 = off.")
    eval_every: StrictInt = Field(
        15, ge=0, description="Evaluate every this many rounds (and at the end); 0 = only at the end.")
    eval_base: bool = Field(True, description="Evaluate the base policy before round 0 (the 'before' of before/after).")
    out_dir: str = Field("runs/train", description="Run folder: checkpoints, round logs, rollouts.")
    save_every: StrictInt = Field(
        1, ge=1, description="Write the resumable state every this many rounds (and at the end).")
    max_rejected_rounds: StrictInt = Field(
        3, ge=1, description="Stop the run after this many rounds in a row were rejected for a NaN/inf reward, "
        "advantage, loss, gradient or weight (a rejected round trains nothing and writes no state).")
    nproc: int | Literal["auto"] = Field(
        1, description="Processes (ranks) of one run on each node, launched by torchrun (aegpo.distributed): the "
        "round's prompt groups are split across them and gradients summed; auto = the visible GPUs (1 on CPU). "
        "The result does not depend on it, so a run may resume with another count.")
    data_parallel: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="How ranks sum gradients: ddp (every rank holds the weights; all-reduce of the trainable "
        "ones), fsdp (FSDP2 fully_shard per transformer block: weights, gradients and AdamW state sharded), auto = "
        "fsdp for full fine-tuning of sd3/flux, ddp otherwise. Unused on one rank.")
    dist_timeout: float = Field(
        1800.0, gt=0, description="Seconds a rank waits in a collective (e.g. for rank 0's checkpoint) before the "
        "run fails; a dead rank then stops the others instead of hanging them.")

    @model_validator(mode="after")
    def _check_nproc(self) -> TrainParams:
        if self.data_parallel == "fsdp" and self.ema_decay:
            raise ValueError("data_parallel: fsdp shards the weights; train.ema_decay needs ddp (or 0)")
        if self.nproc != "auto" and self.nproc < 1:
            raise ValueError(f"nproc: expected a process count >= 1 or auto, got {self.nproc}")
        if self.nproc != "auto" and self.nproc > self.prompts_per_round:
            raise ValueError(f"nproc: {self.nproc} ranks but prompts_per_round={self.prompts_per_round}; every rank "
                             "needs at least one whole prompt group")
        return self


class EntropyParams(Section):
    record: bool = Field(True, description="Record attention entropy during rollouts (needed by the aegpo strategies).")
    layers: list[int] | Literal["all"] = Field(
        "all", description="Joint-attention layers (block indices) to record; negative indices count from the end.")
    heads: list[int] | Literal["all"] = Field("all", description="Heads to record.")
    keys: Literal["all", "text"] = Field(
        "all", description="Entropy over all keys, or over the text keys with the softmax renormalised on them.")
    normalize: bool = Field(False, description="Divide by log(number of keys), giving entropy in [0, 1].")
    query_stride: StrictInt = Field(1, ge=1, description="Use every n-th image query (subsampling cuts the cost).")
    chunk_size: StrictInt = Field(
        1024, ge=1, description="Image queries per chunk of the log-sum-exp computation (bounds memory).")
    method: Literal["chunked", "fused"] = Field(
        "chunked", description="chunked: log-sum-exp over query chunks (aegpo/entropy/core.py); fused: one "
        "flash-attention call per layer with the keys as values, no logits matrix (aegpo/entropy/fused.py; much faster "
        "on GPU, falls back to chunked where unsupported).")


class AEGPOParams(Section):
    probe_seed: StrictInt = Field(
        4321, description="Noise seed of entropy probes (base profile and current policy share it, so ΔEntropy sees "
        "only the policy change).")
    cache_dir: str = Field(
        "cache/profiles", description="Where base-entropy profiles are cached (keyed on base checkpoint, prompt set "
        "and probe parameters).")
    delta: Literal["absolute", "relative"] = Field(
        "relative", description="ΔEntropy = |E_θ − E_base| / E_base (relative: the paper's abstract says 'relative "
        "change') or |E_θ − E_base| (absolute: our deviation; within 0.005 strict of relative on the built-in world, "
        "docs/findings.md §2).")
    delta_aggregate: Literal["mean", "peaks"] = Field(
        "mean", description="Aggregate Entropy(t) over all steps (mean) or over the selected peak steps only.")
    delta_source: Literal["probe", "history"] = Field(
        "probe", description="Current entropy from a probe pass this round (costs P·T NFE) or from the prompt's "
        "previous rollouts (free, stale; unseen prompts are probed).")
    allocation: Literal["median_split", "proportional", "uniform"] = Field(
        "median_split", description="Budget rule (aegpo/allocation.py).")
    tie_tolerance: StrictFloat = Field(
        1e-5, ge=0, description="ΔEntropy differences below tie_tolerance × the batch's mean base entropy count as "
        "ties (relative ΔEntropy: below tie_tolerance itself); ties get uniform budgets (round 0 of a LoRA run: "
        "ΔEntropy is float noise of ~1e-7 of the entropy).")
    high_group: StrictInt | None = Field(
        None, ge=2, description="median_split: rollouts above the median; null = round(4/3 · train.group_size) (16 for "
        "12, a secondary source's reading of the paper).")
    low_group: StrictInt | None = Field(
        None, ge=2, description="median_split: rollouts below the median; null = 2 · train.group_size − high_group "
        "(8); high + low must be 2 · group_size.")
    floor: StrictInt | None = Field(
        None, ge=2, description="proportional: fewest rollouts a prompt gets; null = max(2, group_size // 3).")
    ceiling: StrictInt | None = Field(
        None, ge=2, description="proportional: most rollouts a prompt gets; null = 2 · group_size.")

    def split(self, group_size: int) -> tuple[int, int]:
        """(high, low) group sizes of median_split."""
        high = self.high_group if self.high_group is not None else min(round(group_size * 4 / 3), 2 * group_size - 2)
        low = self.low_group if self.low_group is not None else 2 * group_size - high
        return high, low

    def bounds(self, group_size: int) -> tuple[int, int]:
        """(floor, ceiling) of proportional."""
        floor = self.floor if self.floor is not None else max(2, group_size // 3)
        return floor, self.ceiling if self.ceiling is not None else 2 * group_size
    peaks_k: StrictInt = Field(
        4, ge=1, description="K steps to explore (4: a secondary source's TopK); also random_k's K.")
    peak_rule: Literal["topk", "peaks"] = Field(
        "topk", description="topk: the K most extreme Entropy(t) steps in peak_direction; peaks: greedy non-maximum "
        "suppression with min_spacing (aegpo/peaks.py).")
    peak_direction: Literal["high", "low", "auto"] = Field(
        "high", description="high: maxima of Entropy(t) (the paper's peaks); low: its minima (troughs; our deviation, "
        "where the built-in model's reward is decided, docs/findings.md §2b); auto: calibrate once on the base "
        "policy (aegpo bench critical-steps) and take maxima for a positive rank correlation of Entropy(t) with "
        "the reward spread of SDE at that step, minima for a negative one, maxima when the 95% CI includes 0.")
    calibration_prompts: StrictInt = Field(
        16, ge=2, description="peak_direction auto: train prompts (the first N) in the calibration.")
    calibration_group: StrictInt = Field(
        4, ge=2, description="peak_direction auto: rollouts per prompt and step (same initial noise, SDE at that step "
        "only).")
    calibration_seed: StrictInt = Field(
        0, description="peak_direction auto: noise seed of the calibration rollouts and its bootstrap.")
    min_spacing: StrictInt = Field(2, ge=1, description="peaks: minimum distance in steps between chosen peaks.")
    peak_scope: Literal["prompt", "batch"] = Field(
        "prompt", description="Choose steps per prompt or once per round from the batch-mean Entropy(t).")
    peak_source: Literal["probe", "base"] = Field(
        "probe", description="Entropy(t) for the step choice: this round's probe of the current policy, or the cached "
        "base profile (free).")


class MixGRPOParams(Section):
    window: StrictInt = Field(4, ge=1, description="Width of the sliding SDE window (MixGRPO: 4).")
    shift_every: StrictInt = Field(
        5, ge=1, description="Rounds before the window slides one step towards σ = 0 (MixGRPO: 25 iterations).")


class EvalParams(Section):
    prompts: str = Field("data/prompts/eval.txt", description="Evaluation prompt file, one per line.")
    num_steps: StrictInt = Field(20, ge=1, description="ODE steps for evaluation samples.")
    samples_per_prompt: StrictInt = Field(
        4, ge=1, description="Images per prompt (seeds 0..n−1 offset by prompt index).")
    seed: StrictInt = Field(1234, description="Base seed of evaluation noise: fixed so evaluations are comparable.")
    batch_size: StrictInt = Field(100, ge=1, description="Images per denoiser batch.")


class ArchParams(Section):
    patch_size: StrictInt = Field(8, ge=1, description="Pixels per token side (32 / patch_size)² image tokens.")
    num_layers: StrictInt = Field(6, ge=1, description="Joint transformer blocks.")
    num_heads: StrictInt = Field(4, ge=1, description="Attention heads.")
    head_dim: StrictInt = Field(32, ge=8, description="Width per head (denoiser width = heads × head_dim).")
    text_dim: StrictInt = Field(64, ge=8, description="Text encoder width.")
    text_layers: StrictInt = Field(2, ge=1, description="Text encoder layers.")
    prediction: Literal["x", "v"] = Field(
        "x", description="Denoiser output: clean image x0 (converted to a velocity) or velocity v.")


class PretrainParams(Section):
    arch: ArchParams = Field(default_factory=ArchParams, description="Architecture of the built-in policy.")
    out: str = Field("checkpoints/shapes-base", description="Where the base checkpoint is written.")
    steps: StrictInt = Field(5000, ge=1, description="Optimizer steps.")
    batch_size: StrictInt = Field(64, ge=1, description="Rendered (image, caption) pairs per step.")
    lr: StrictFloat = Field(7e-4, gt=0, description="AdamW peak learning rate (after a linear warm-up).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant after warm-up (a run's first N steps do not depend on `steps`, so any "
        "intermediate checkpoint is reproduced exactly by steps=N), or cosine decay to 10% at `steps`.")
    warmup: StrictInt = Field(300, ge=0, description="Warm-up steps.")
    weight_decay: StrictFloat = Field(0.01, ge=0, description="AdamW weight decay.")
    ema_decay: StrictFloat = Field(0.999, ge=0, lt=1, description="EMA decay of the shipped weights.")
    caption_dropout: StrictFloat = Field(
        0.1, ge=0, le=1, description="Probability of an empty caption (enables guidance).")
    prompt_mix: Literal["uniform", "balanced"] = Field(
        "balanced", description="uniform over train prompts (98% compound/relation), or balanced over prompt kinds "
        "(single / compound / relation a third each).")
    grid: StrictInt = Field(
        8, ge=1, le=8, description="Rendered objects' bounding-box corners on multiples of this many "
        "pixels (1: anywhere, as the spec allows; the patch size puts each object on whole tokens).")
    object_size: StrictInt = Field(
        7, ge=0, le=MAX_SIZE, description="Every rendered object this many pixels across (0: "
        f"uniform over the spec's {MIN_SIZE}..{MAX_SIZE}).")
    sigma_sampling: Literal["logit_normal", "uniform"] = Field(
        "uniform", description="Training σ distribution: uniform (default; trains the high-noise layout phase) or "
        "SD3's logit-normal(0, 1).")
    stop_at: StrictInt = Field(0, ge=0, description="Stop after this many steps and write `out` there (0: run all "
                         "`steps`); the LR schedule still spans `steps`.")
    save_every: StrictInt = Field(500, ge=1, description="Write an intermediate checkpoint every this many steps.")
    seed: StrictInt = Field(0, description="Seed of initialisation, data and noise.")
    init_from: str = Field(
        "", description="Start from this base checkpoint's weights instead of random init (empty = from scratch).")

    @model_validator(mode="after")
    def _check_stop(self) -> PretrainParams:
        if self.stop_at > self.steps:
            raise ValueError(f"pretrain.stop_at: {self.stop_at} is beyond pretrain.steps = {self.steps}")
        if self.object_size and self.object_size < MIN_SIZE:
            raise ValueError(f"pretrain.object_size: expected 0 (random) or {MIN_SIZE}..{MAX_SIZE} pixels, "
                             f"got {self.object_size}")
        return self


class Params(Section):
    seed: StrictInt = Field(0, description="Global seed of a training run (prompt order, noise, LoRA init).")
    model: ModelParams = Field(default_factory=ModelParams, description="Policy.")
    sampler: SamplerParams = Field(default_factory=SamplerParams, description="Rollout sampler.")
    reward: RewardParams = Field(default_factory=RewardParams, description="Reward.")
    train: TrainParams = Field(default_factory=TrainParams, description="RL training.")
    entropy: EntropyParams = Field(default_factory=EntropyParams, description="Attention-entropy recording.")
    aegpo: AEGPOParams = Field(
        default_factory=AEGPOParams, description="AEGPO: ΔEntropy budgets and entropy-peak exploration.")
    mixgrpo: MixGRPOParams = Field(default_factory=MixGRPOParams, description="MixGRPO baseline: sliding SDE window.")
    eval: EvalParams = Field(default_factory=EvalParams, description="Evaluation.")
    pretrain: PretrainParams = Field(
        default_factory=PretrainParams, description="Base-model pretraining (shapes world).")

    @model_validator(mode="after")
    def _check(self) -> Params:
        a, g = self.aegpo, self.train.group_size
        high, low = a.split(g)
        if high + low != 2 * g or not 2 <= low <= g <= high:
            raise ValueError(f"aegpo.high_group + aegpo.low_group must equal 2 · train.group_size = {2 * g} "
                             f"(same budget as uniform GRPO) with 2 ≤ low ≤ group_size ≤ high, got {high} + {low}")
        floor, ceiling = a.bounds(g)
        if not floor <= g <= ceiling:
            raise ValueError(f"aegpo.floor ≤ train.group_size ≤ aegpo.ceiling is needed, got {floor}, {g}, {ceiling}")
        from aegpo.strategies.registry import STRATEGIES, strategy_class

        if self.train.strategy not in STRATEGIES:
            raise ValueError(f"train.strategy: unknown strategy {self.train.strategy!r} "
                             f"(expected one of {sorted(STRATEGIES)})")
        strategy_class(self.train.strategy).validate_params(self)  # each strategy checks what it reads
        return self


# ----- the shipped params.yaml versus these defaults ------------------------------------------------

# The defaults above are the one source of every default. The shipped params.yaml spells out each key, and it
# departs from a default only where listed here, with the reason (tests/test_config.py fails on any other
# difference, and on a listed key that no longer differs).
SHIPPED_DIFFERENCES: dict[str, str] = {
    "train.strategy": "code: grpo, so a bare Params() runs the baseline, which needs no base profile or probes; "
                      "shipped: aegpo, what the main job trains",
    "entropy.layers": "code: every layer, right for any model; shipped: layers 2-4 of the built-in 6-layer model, "
                      "where recording costs ≤ 1.05x rollout time (`aegpo bench overhead`)",
    "entropy.query_stride": "code: every image query (exact entropy); shipped: every 4th, the measured cheap setting "
                            "of the built-in model (`aegpo bench overhead`)",
    "aegpo.high_group": "code: null, derived from train.group_size so that any group size stays valid; shipped: the "
                        "derived value for group_size 12, written out (16)",
    "aegpo.low_group": "code: null, derived as 2 · group_size − high_group; shipped: the value for group_size 12 (8)",
    "aegpo.floor": "code: null, derived as max(2, group_size // 3); shipped: the value for group_size 12 (4)",
    "aegpo.ceiling": "code: null, derived as 2 · group_size; shipped: the value for group_size 12 (24)",
    "train.micro_batch": "code: 32, a size real models' activations fit in on one GPU; shipped: 128 for the built-in "
                         "model, where fewer, larger forward/backward passes are faster on a CPU (same maths)",
    "aegpo.peak_direction": "code: the paper's entropy maxima; shipped: auto, measured once on the base policy, which "
                            "picks the built-in model's minima, where its reward is decided (docs/findings.md §2b)",
    "train.rounds": "code: 45, where the built-in world's gain is steady across seeds (docs/findings.md §2b); shipped: "
                    "26, the most that fit the main job into 10 minutes on 2 cores (docs/findings.md §2e)",
    "train.eval_every": "code: 15 (three evals in 45 rounds); shipped: 13, two evals after the base's in 26 rounds",
}

BUILTIN = "builtin"  # `--params builtin`: the defaults above, with no params file


def shipped_differences(shipped: Params) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (code default, shipped value) for every key where `shipped` departs from the defaults."""
    code, ours = flatten(Params()), flatten(shipped)
    return {k: (code[k], ours[k]) for k in code if code[k] != ours[k]}


# ----- loading ---------------------------------------------------------------------------------


_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' (or 'params.yaml:a.b=value') → (['a', 'b'], YAML-parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r}: expected key.sub=value")
    key = key.strip()
    if ":" in key:  # dvc's file prefix
        file_part, _, key = key.rpartition(":")
        if not file_part.endswith((".yaml", ".yml")):
            raise ParamsError(f"override {text!r}: expected [params.yaml:]key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({err})") from None
    if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.2 (DVC's parser) reads 1e-4 as a number; PyYAML's 1.1 does not
    return key.split("."), value


_HYDRA_PREFIX = re.compile(r"([^=:]*\.ya?ml:)?(~|\+\+|\+)?(.*)", re.S)


def split_override(text: str) -> tuple[str, str]:
    """'[file.yaml:][~|+|++]key=value' → (the prefix: '', '~', '+' or '++'; 'key=value' without file and prefix)."""
    m = _HYDRA_PREFIX.match(text)
    return m.group(2) or "", m.group(3)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each override set (intermediate mappings are created), in order.

    Hydra's prefixes, as `dvc exp run -S` takes them, are accepted so one list of overrides works for
    both tools: `+key=value` and `++key=value` set like `key=value`; `~key` (or `~key=value`) deletes the
    key. A plain `key={...}` replaces a mapping here but merges into it in DVC, so a mapping that must
    lose keys (e.g. `reward.weights` when changing the reward) is written `~key` then `+key={...}`.
    """
    import copy

    out = copy.deepcopy(raw)
    for text in overrides:
        op, text = split_override(text)
        if op == "~":
            path, _ = parse_override(text if "=" in text else text + "=")
            node = out
            for part in path[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(path[-1], None)
            continue
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        elif e["type"] == "value_error":  # a cross-field check: its message names the keys
            lines.append(f"{source}: {str(e['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"{source}: {key}: {e['msg']} (got {shorten(repr(e.get('input')), 200)})")
    return "\n".join(lines)


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def load_params(path: str | Path | None = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read `path`, apply overrides, validate. `path` None or "builtin" (`BUILTIN`) asks for the built-in
    defaults with no file; any other missing file is an error."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None and str(path) != BUILTIN:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ParamsError(f"params file {path} does not exist (pass --params {BUILTIN} to run on the "
                              "built-in defaults, listed in aegpo/config.py)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ParamsError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return params_from_dict(apply_overrides(raw, overrides or []), source)


def flatten(params: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value, for trackers (MLflow params) and dvc.yaml checks."""
    out: dict[str, Any] = {}
    for name in type(params).model_fields:
        value = getattr(params, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(flatten(value, key + "."))
        else:
            out[key] = value
    return out
