"""`aegpo bench critical-steps`: which denoising steps decide the reward, and does Entropy(t) point at them?

The premise of AEGPO's local level is that the timesteps where exploration pays off are marked by
an extreme of the base policy's attention entropy Entropy(t) (the paper: its peaks). This measures it
on any model kind and reward:

- **Reward spread of SDE at step t alone.** Every prompt gets, for each candidate step t (0 … T−2;
  the last step is never explored), a group of `group` rollouts that share their initial noise and
  run the ODE everywhere except step t. The within-group reward std then comes from step t's noise
  only: how much exploring at t can change the outcome. Shape (P, T).
- **Entropy(t)**: the base profile's probe of the same prompts (fixed probe noise; the same numbers
  the strategies read). Shape (P, T).
- **Rank correlation** (Spearman) over the candidate steps of the prompt-mean Entropy(t) and the
  prompt-mean spread, with a 95% percentile interval from a bootstrap over prompts.
- **Direction**: `high` (the paper's maxima) when the interval lies above 0, `low` (minima) when it
  lies below 0, and the paper's `high` when it includes 0 (or the spread is zero everywhere).

`aegpo.peak_direction: auto` runs `load_or_calibrate` once on the base policy; the result is cached
beside the base profile under a key of (base checkpoint digest, calibration prompts, probe parameters,
calibration settings, reward). Cost: P·(T−1)·group rollouts of T steps plus P probes of T steps
(NFE in `nfe`); the command also measures the last step (no candidate) for the table.

Outputs of the command (`--out DIR`): `summary.json` (per step: σ, spread, share of groups with any
spread, reward mean, Entropy(t); the correlation, its interval, the direction, NFE, machine and
settings), `critical_steps.png`, `table.md`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aegpo.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
BOOTSTRAP = 2000


@dataclass(frozen=True)
class CalibrationSpec:
    """Everything that changes a calibration's numbers besides the base policy and the probe."""

    group: int
    seed: int
    sde: str
    noise_level: float
    reward: str
    reward_weights: dict[str, float]
    reward_models: dict[str, Any]

    @classmethod
    def from_params(cls, params) -> CalibrationSpec:
        a, s, r = params.aegpo, params.sampler, params.reward
        return cls(a.calibration_group, a.calibration_seed, s.sde, s.noise_level, r.name, dict(r.weights),
                   json.loads(json.dumps(r.models, default=str)))


def measure_spread(policy, prompts: list[str], reward, num_steps: int, shift: float, spec: CalibrationSpec,
                   batch_size: int = 64, progress: bool = False, include_last: bool = True) -> dict[str, Any]:
    """Reward spread of SDE at one step: `spread` (P, S) within-group std, `any_spread` (P, S) bool,
    `reward_mean` (S,), `sigmas` (T,), `nfe`; S = T, or T − 1 without the last step (no candidate; the
    calibration inside training skips it)."""
    from aegpo.rollout import StepPlan, derive_seed, generate, sample_seeds
    from aegpo.strategies.base import expand_groups

    p, g = len(prompts), spec.group
    prompt_index, rank = expand_groups([g] * p)
    n = len(prompt_index)
    init = sample_seeds(derive_seed(spec.seed, "critical-steps", "init"), prompt_index, rank, True)
    measured = num_steps if include_last else num_steps - 1
    spread = np.zeros((p, measured))
    reward_mean = np.zeros(measured)
    nfe, sigmas = 0, None
    for t in range(measured):
        sde = torch.zeros(n, num_steps, dtype=torch.bool)
        sde[:, t] = True
        seeds = sample_seeds(derive_seed(spec.seed, "critical-steps", t), prompt_index, rank, False)
        ro = generate(policy, prompts, prompt_index, seeds, StepPlan(sde, torch.zeros_like(sde)), init_seeds=init,
                      sde=spec.sde, noise_level=spec.noise_level, shift=shift, batch_size=batch_size)
        score = np.asarray(reward(ro.images, [prompts[i] for i in prompt_index]).score, dtype=np.float64)
        score = score.reshape(p, g)
        spread[:, t] = score.std(axis=1)
        reward_mean[t] = score.mean()
        nfe += ro.nfe
        sigmas = ro.sigmas[:-1].numpy()
        if progress:
            log.info("critical steps: step %d/%d, reward spread %.4f", t + 1, measured, spread[:, t].mean())
    return {"spread": spread, "any_spread": spread > 0, "reward_mean": reward_mean, "sigmas": sigmas, "nfe": nfe}


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row pair of x, y (B, C) (average ranks for ties); NaN where a row is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(1) / den
    rho[(np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)] = np.nan  # a constant curve has no ranking
    return rho


def rank_correlation(entropy: np.ndarray, spread: np.ndarray, seed: int = 0,
                     boot: int = BOOTSTRAP) -> dict[str, Any]:
    """Spearman ρ over steps of mean Entropy(t) (P, C) and mean spread (P, C), with a 95% bootstrap-over-prompts
    interval. `valid_bootstrap`: resamples where both curves vary (ρ is defined); fewer than half valid, or a
    constant curve, leaves the interval (and ρ) None."""
    if entropy.shape != spread.shape or entropy.ndim != 2:
        raise ValueError(f"rank_correlation: entropy {entropy.shape} and spread {spread.shape} must be equal (P, C)")
    rho = float(_spearman_rows(entropy.mean(0)[None], spread.mean(0)[None])[0])
    p = entropy.shape[0]
    idx = np.random.default_rng(seed).integers(0, p, size=(boot, p))  # (B, P) resampled prompts
    samples = _spearman_rows(entropy[idx].mean(1), spread[idx].mean(1))
    finite = samples[np.isfinite(samples)]
    if np.isfinite(rho) and len(finite) >= boot // 2:
        low, high = (float(v) for v in np.percentile(finite, [2.5, 97.5]))
    else:  # undefined: JSON null rather than NaN
        rho, low, high = (rho if np.isfinite(rho) else None), None, None
    return {"rho": rho, "ci_low": low, "ci_high": high, "bootstrap": boot, "valid_bootstrap": len(finite)}


def choose_direction(corr: dict[str, Any]) -> tuple[str, str]:
    """(direction, reason): maxima for a positive correlation, minima for a negative one, else the paper's maxima."""
    low, high = corr["ci_low"], corr["ci_high"]
    if low is None or high is None:
        return "high", "no ranking (the reward spread or Entropy(t) is constant): the paper's maxima"
    if low > 0:
        return "high", f"positive: Entropy(t) maxima are the decisive steps (95% CI {low:+.2f} … {high:+.2f})"
    if high < 0:
        return "low", f"negative: Entropy(t) minima are the decisive steps (95% CI {low:+.2f} … {high:+.2f})"
    return "high", f"inconclusive (95% CI {low:+.2f} … {high:+.2f} includes 0): the paper's maxima"


def calibrate(policy, entropy_fn, prompts: list[str], reward, num_steps: int, shift: float, spec: CalibrationSpec,
              probe_nfe: int, progress: bool = False, include_last: bool = True) -> dict[str, Any]:
    """The measurement and the decision as a JSON-able dict.

    `entropy_fn(prompts)`: base Entropy(t) (P, T) from the fixed probe noise; `probe_nfe`: what probing
    these prompts costs (charged whether or not they were cached)."""
    t0 = time.perf_counter()
    if num_steps < 3:
        raise ValueError(f"critical steps: need sampler.num_steps ≥ 3 to rank candidate steps, got {num_steps}")
    measured = measure_spread(policy, prompts, reward, num_steps, shift, spec, progress=progress,
                              include_last=include_last)
    entropy = np.asarray(entropy_fn(prompts), dtype=np.float64)
    cand = num_steps - 1  # the last step (σ → 0) is never explored
    corr = rank_correlation(entropy[:, :cand], measured["spread"][:, :cand], seed=spec.seed)
    direction, reason = choose_direction(corr)
    steps = [{"step": t, "sigma": round(float(measured["sigmas"][t]), 4),
              "reward_spread": float(measured["spread"][:, t].mean()),
              "groups_with_spread": float(measured["any_spread"][:, t].mean()),
              "reward_mean": float(measured["reward_mean"][t]), "entropy": float(entropy[:, t].mean()),
              "candidate": t < cand} for t in range(measured["spread"].shape[1])]
    return {"direction": direction, "reason": reason, **corr, "steps": steps, "prompts": len(prompts),
            "group": spec.group, "nfe": int(measured["nfe"] + probe_nfe), "rollout_nfe": int(measured["nfe"]),
            "probe_nfe": int(probe_nfe), "seconds": round(time.perf_counter() - t0, 2), "spec": asdict(spec)}


def _num(x: float) -> str:
    return f"{x:+.2f}" if x is not None else "n/a"


def summary_line(result: dict[str, Any]) -> str:
    """One line for printouts and logs."""
    return (f"peak direction {result['direction']} from the base calibration: Spearman ρ(Entropy(t), reward spread) "
            f"{_num(result['rho'])}, 95% CI {_num(result['ci_low'])} … {_num(result['ci_high'])} over "
            f"{result['prompts']} prompts × {result['group']} rollouts ({result['nfe']:,} NFE)")


def plot(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    x = [s["step"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x, [s["reward_spread"] for s in steps], color=["tab:blue" if s["candidate"] else "lightgrey" for s in steps],
           label="reward std, SDE at this step only")
    ax.set_xlabel("denoising step t (σ from 1 to 0; grey: never explored)")
    ax.set_ylabel("within-group reward std")
    ax2 = ax.twinx()
    ax2.plot(x, [s["entropy"] for s in steps], color="tab:red", marker="o", label="base Entropy(t)")
    ax2.set_ylabel("base Entropy(t)", color="tab:red")
    ax.set_title(f"ρ = {_num(result['rho'])} [{_num(result['ci_low'])}, {_num(result['ci_high'])}] → "
                 f"{result['direction']} ({result['prompts']} prompts × {result['group']})", fontsize=10)
    fig.legend(loc="upper center", fontsize=8, bbox_to_anchor=(0.5, 0.9))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    # a unique temporary name: every rank of a multi-process run calibrates and writes the same plot
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def table_markdown(result: dict[str, Any]) -> str:
    lines = [summary_line(result), "", f"Direction: **{result['direction']}**: {result['reason']}", "",
             "| step | σ | reward std (SDE only here) | groups with spread | reward mean | base Entropy(t) |",
             "|---|---|---|---|---|---|"]
    for s in result["steps"]:
        mark = "" if s["candidate"] else " (never explored)"
        lines.append(f"| {s['step']}{mark} | {s['sigma']:.3f} | {s['reward_spread']:.4f} | "
                     f"{s['groups_with_spread']:.0%} | {s['reward_mean']:.4f} | {s['entropy']:.4f} |")
    return "\n".join(lines) + "\n"


def calibration_key(base_digest: str, prompts: list[str], probe_spec, spec: CalibrationSpec, num_steps: int,
                    shift: float) -> str:
    """Keyed like the base profile (base digest, prompt set, probe parameters) plus the calibration settings."""
    from aegpo.entropy.profile import cache_key

    blob = json.dumps({"profile": cache_key(base_digest, prompts, probe_spec), "calibration": asdict(spec),
                       "num_steps": num_steps, "shift": shift}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_or_calibrate(policy, entropy_fn, base_digest: str, prompts: list[str], reward, params, probe_nfe: int,
                      cache_dir: str | Path, progress: bool = False) -> tuple[dict[str, Any], bool]:
    """(result, whether it was computed now); cached as JSON + PNG in `cache_dir`. `policy` must be the base."""
    from aegpo.entropy.profile import ProbeSpec

    spec = CalibrationSpec.from_params(params)
    s = params.sampler
    key = calibration_key(base_digest, prompts, ProbeSpec.from_params(params), spec, s.num_steps, s.shift)
    path = Path(cache_dir) / f"critical-steps-{key[:16]}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if cached.get("cache_key") == key:
                log.info("critical steps: reusing %s", path)
                return cached, False
        except (OSError, ValueError) as err:
            log.warning("critical steps: ignoring unreadable cache %s (%s); measuring again", path, err)
    log.info("critical steps: calibrating the peak direction on %d prompts × %d rollouts per step", len(prompts),
             spec.group)
    result = calibrate(policy, entropy_fn, prompts, reward, s.num_steps, s.shift, spec, probe_nfe, progress,
                       include_last=False)  # the last step is no candidate: not worth its rollouts here
    result["cache_key"] = key
    result["plot"] = str(plot(result, path.with_suffix(".png")))
    atomic_write_json(path, result)
    return result, True


def record_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What goes into a round record (plan info): the decision, its evidence and cost, without the step table."""
    keys = ("direction", "reason", "rho", "ci_low", "ci_high", "prompts", "group", "nfe", "seconds", "plot",
            "cache_key")
    out = {k: result.get(k) for k in keys}
    out["spread_by_step"] = [round(s["reward_spread"], 5) for s in result["steps"]]
    out["entropy_by_step"] = [round(s["entropy"], 5) for s in result["steps"]]
    return out


def run_critical_steps(params, out: str | Path, num_prompts: int | None = None, group: int | None = None,
                       project_dir: str | Path = ".", progress: bool = True) -> dict[str, Any]:
    """The command: calibrate the base policy of `params` (any model kind and reward), write the outputs."""
    from aegpo.bench.machine import machine_description
    from aegpo.checkpoint import load_base_policy
    from aegpo.config import apply_overrides, params_from_dict
    from aegpo.distributed import resolve_device
    from aegpo.entropy.profile import EntropyProfile, ProbeSpec, probe
    from aegpo.entropy.recorder import EntropyRecorder
    from aegpo.prompt_files import read_prompt_file
    from aegpo.rewards.registry import reward_from_params

    overrides = ([f"aegpo.calibration_prompts={num_prompts}"] if num_prompts else []) + \
        ([f"aegpo.calibration_group={group}"] if group else [])
    if overrides:
        params = params_from_dict(apply_overrides(params.model_dump(mode="json"), overrides), "critical-steps")
    project_dir = Path(project_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reward = reward_from_params(params, project_dir)
    prompts = read_prompt_file(project_dir / params.train.prompts, reward.validate_prompt)
    prompts = prompts[: params.aegpo.calibration_prompts]
    policy, base_ref = load_base_policy(params.model, project_dir)
    policy.to(resolve_device(params.model.device)).eval()
    recorder = EntropyRecorder.from_params(params.entropy)
    recorder.install(policy)
    probe_spec = ProbeSpec.from_params(params)
    t0 = time.perf_counter()
    ro = probe(policy, prompts, probe_spec, recorder)
    profile = EntropyProfile.from_rollout(prompts, ro, recorder.layer_names)
    result = calibrate(policy, profile.entropy_t, prompts, reward, params.sampler.num_steps, params.sampler.shift,
                       CalibrationSpec.from_params(params), ro.nfe, progress=progress)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["plot"] = str(plot(result, out / "critical_steps.png"))
    result["settings"] = {"machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
                          "checkpoint": str(base_ref.get("path", params.model.checkpoint)),
                          "model_kind": params.model.kind, "num_steps": params.sampler.num_steps,
                          "shift": params.sampler.shift, "entropy": params.entropy.model_dump(mode="json")}
    atomic_write_json(out / "summary.json", result)
    atomic_write_text(out / "table.md", table_markdown(result))
    return result
