"""Our `clip_range` and `kl_beta` in Flow-GRPO's conventions and back (docs/method.md, "Flow-GRPO's conventions").

aegpo.samplers reports the exact Gaussian log-density of a transition x' ~ N(μ_θ, s_t²·I), averaged over the
latent dimensions, for every `sde`; aegpo.samplers.kl_to_reference is the exact KL mean‖μ_θ − μ_ref‖² / (2 s_t²).
Flow-GRPO's code (sd3_sde_with_logprob, train_sd3) differs in two places, both per denoising step t:

- `sde: cps`: its log-prob is −mean((x' − μ_θ)²), without the 1/(2 s_t²) factor (and without the constants, which
  cancel in a ratio). Its log-ratio is therefore 2 s_t² times ours, s_t = σ_{t+1}·sin(aπ/2), and its clip
  |ρ − 1| ≤ ε_F bounds our ratio by (1 ± ε_F)^(1 / (2 s_t²)) ≈ 1 ± ε_F / (2 s_t²).
- `sde: flow`: the log-prob is the same as ours, but its KL divides by 2·g_t² with g_t = a·√(σ_t / (1 − σ_t)) the
  diffusion coefficient, not by the transition variance g_t²·(−dσ_t): its KL is (−dσ_t) times ours, so its
  β_F equals our β = β_F·(−dσ_t) (dσ_t = σ_{t+1} − σ_t < 0). For `cps` its KL divides by the transition
  variance s_t², like ours.

The factors depend on the step, while `train.clip_range` and `train.kl_beta` are one number each: `equivalents`
gives the per-step values, `preset_value` the one a preset uses (the mean over the explored steps; exact when
the factor is the same at every explored step, e.g. kl_beta with shift 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aegpo.samplers import sigma_schedule


@dataclass(frozen=True)
class StepEquivalent:
    """Our setting that reproduces Flow-GRPO's `clip_range` ε_F and `beta` β_F at one denoising step."""

    step: int
    sigma: float  # σ_t
    sigma_next: float  # σ_{t+1}
    std: float  # our transition std s_t at noise level a
    clip_low: float  # our ρ bounds: Flow-GRPO's clip at this step is ρ ∈ [clip_low, clip_high] in our ratio
    clip_high: float
    clip_range: float  # the symmetric first-order value, ε_F / (2 s_t²) for cps, ε_F for flow
    kl_beta: float  # β_F·(−dσ_t) for flow, β_F for cps


def transition_std(sde: str, sigma: float, sigma_next: float, noise_level: float, sigma_max: float) -> float:
    """Our s_t for one step (aegpo.samplers.mean_and_std, without the tensors)."""
    if sde == "cps":
        return sigma_next * math.sin(noise_level * math.pi / 2)
    if sde == "flow":
        denom = 1 - (sigma_max if sigma >= 1 else sigma)
        return noise_level * math.sqrt(sigma / denom) * math.sqrt(sigma - sigma_next)
    raise ValueError(f"sde {sde!r}: Flow-GRPO's conventions are defined for 'flow' and 'cps'")


def equivalents(sde: str, noise_level: float, num_steps: int, shift: float, clip_range: float, beta: float,
                steps: list[int] | None = None) -> list[StepEquivalent]:
    """Per explored step (default: every step but the last), our values equivalent to Flow-GRPO's ε_F and β_F."""
    sigmas = sigma_schedule(num_steps, shift).tolist()
    sigma_max = sigmas[1]
    out = []
    for t in steps if steps is not None else range(num_steps - 1):
        s, sn = sigmas[t], sigmas[t + 1]
        std = transition_std(sde, s, sn, noise_level, sigma_max)
        if sde == "cps":
            power = 1.0 / (2 * std * std)
            out.append(StepEquivalent(t, s, sn, std, (1 - clip_range) ** power, (1 + clip_range) ** power,
                                      clip_range * power, beta))
        else:
            out.append(StepEquivalent(t, s, sn, std, 1 - clip_range, 1 + clip_range, clip_range, beta * (s - sn)))
    return out


def preset_value(values: list[StepEquivalent], field: str) -> float:
    """The mean of a per-step field over the explored steps: the one number a params file can hold."""
    return sum(getattr(v, field) for v in values) / len(values)


def main(argv: list[str] | None = None) -> int:
    """Print the per-step table: `python -m aegpo.conventions --sde cps --noise-level 0.8 --clip-range 1e-5`."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--sde", choices=("flow", "cps"), required=True)
    p.add_argument("--noise-level", type=float, required=True)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--shift", type=float, default=3.0, help="SD3/FLUX schedulers' shift (Flow-GRPO: 3)")
    p.add_argument("--clip-range", type=float, required=True, help="Flow-GRPO's train.clip_range")
    p.add_argument("--beta", type=float, default=0.0, help="Flow-GRPO's train.beta")
    p.add_argument("--steps", type=int, nargs="*", help="explored steps (default: all but the last)")
    args = p.parse_args(argv)
    rows = equivalents(args.sde, args.noise_level, args.num_steps, args.shift, args.clip_range, args.beta, args.steps)
    print("step  sigma  sigma_next  std      our clip_range  our rho bounds            our kl_beta")
    for r in rows:
        print(f"{r.step:4d}  {r.sigma:.3f}  {r.sigma_next:.3f}       {r.std:.4f}   {r.clip_range:.3g}"
              f"{'':10s}[{r.clip_low:.6g}, {r.clip_high:.6g}]   {r.kl_beta:.3g}")
    print(f"mean over these steps: clip_range {preset_value(rows, 'clip_range'):.3g}, "
          f"kl_beta {preset_value(rows, 'kl_beta'):.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
