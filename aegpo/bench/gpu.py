"""GPU check: throughput, MFU, training step, memory and entropy-recording overhead at real model sizes.

    python -m aegpo.bench.gpu --out DIR            # one H100/H200, no internet, ≈ 5–8 minutes
    python -m aegpo.bench.gpu --out DIR --tiny     # toy sizes on the CPU (what the test runs)

For each model — an SD3.5-Medium-sized and a FLUX.1-dev-sized transformer built from the
published configs below with random bf16 weights (no download; text conditioning is random
tensors of the real shapes, and there is no VAE) — it measures, on the same policy code the
trainer uses (aegpo.models.sd3 / aegpo.models.flux, LoRA r32 on the attention projections):

- **forward**: one denoiser call on a batch; TFLOP/s and MFU = (FLOPs ÷ time) ÷ the card's dense
  bf16 peak. FLOPs are counted analytically: 2·in·out per row through every `nn.Linear` plus
  4·S_q·S_k·D per head in every attention, from the shapes of one forward (hooks, no profiler);
- **rollout**: `aegpo.rollout.generate` (SDE steps, float32 sampler arithmetic, log-probs), images/s
  and MFU, with entropy recording off and with each recording variant on (same seeds, interleaved
  repeats, medians); the overhead of a variant is its time ratio − 1 and its extra peak memory;
- **training**: one `aegpo.policy_update.policy_update` over the rollout's trained transitions (gradient
  checkpointing on): seconds per step and per transition, peak memory;
- **correctness**: recording processors return exactly what diffusers' default processors return
  (JointAttnProcessor2_0, FluxAttnProcessor: double- and single-stream blocks); the fused and chunked
  entropy agree with the explicit full-matrix entropy; rollout log-probs are finite; the first
  training ratio equals 1 (the update recomputes the rollout's log-probs).

It prints one table and writes DIR/summary.json (card, peak, `mfu`, `entropy_time_ratio`,
`entropy_extra_gib` of the recommended variant at SD3.5-M size, per-model details), DIR/table.md
and DIR/gpu_check.log. Goals (checked, not enforced): entropy ≤ 2 % of rollout time and ≤ 0.2 GB
at SD3.5-M size; rollout transformer ≥ 50 % of bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ----- published configs (transformer/config.json of the hub repos), hard-coded: no download -----------
SD35_MEDIUM = dict(  # stabilityai/stable-diffusion-3.5-medium
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX1_DEV = dict(  # black-forest-labs/FLUX.1-dev
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY_SD3 = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
                pos_embed_max_size=8, dual_attention_layers=(0,), qk_norm="rms_norm")
TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(4, 6, 6))
TEXT_TOKENS = {"sd3": 77 + 256, "flux": 512}  # CLIP + T5 (SD3), T5 (FLUX.1-dev)

#: dense bf16 tensor-core peak (TFLOP/s) by device-name fragment, most specific first
BF16_PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H800", 989.4),
                    ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0), ("L4", 121.0)]

#: entropy-recording variants: name → EntropyRecorder arguments ("layers": "all" or a stride over layers)
VARIANTS: dict[str, dict[str, Any]] = {
    "chunked-all-s1": {"method": "chunked", "layers": "all", "query_stride": 1},
    "chunked-all-s4": {"method": "chunked", "layers": "all", "query_stride": 4},
    "fused-all-s1": {"method": "fused", "layers": "all", "query_stride": 1},
    "fused-all-s4": {"method": "fused", "layers": "all", "query_stride": 4},
    "fused-every3-s4": {"method": "fused", "layers": 3, "query_stride": 4},
    "fused-every3-s16": {"method": "fused", "layers": 3, "query_stride": 16},
}
RECOMMENDED = "fused-every3-s4"


# ----- machine helpers ------------------------------------------------------------------------------
def card_peak_tflops(name: str) -> float | None:
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment.lower() in name.lower():
            return peak
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    """(median seconds, last result) of `fn()` over `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """Measured dense matmul throughput (a roofline for MFU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    seconds, _ = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * n**3 * repeats / seconds / 1e12


# ----- FLOP counting ------------------------------------------------------------------------------------
class FlopCounter:
    """FLOPs of forwards through `model`: linears (2·rows·in·out) + attention (4·B·H·S_q·S_k·D).

    Attention sizes come from each diffusers attention module's inputs (joint attention attends over
    image + text tokens; FLUX single-stream blocks get the concatenation as `hidden_states`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.flops = 0
        self.handles = []
        for module in model.modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_hook(self._linear))
            elif hasattr(module, "processor") and hasattr(module, "heads"):
                self.handles.append(module.register_forward_pre_hook(self._attention, with_kwargs=True))

    def _linear(self, module: nn.Linear, inputs, output) -> None:
        x = inputs[0]
        self.flops += 2 * (x.numel() // x.shape[-1]) * module.in_features * module.out_features

    def _attention(self, module, args, kwargs) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        seq = hidden.shape[1] + (context.shape[1] if context is not None else 0)
        head_dim = getattr(module, "head_dim", None) or module.inner_dim // module.heads
        self.flops += 4 * hidden.shape[0] * module.heads * seq * seq * head_dim

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ----- models ----------------------------------------------------------------------------------------------
def build_policy(kind: str, tiny: bool, resolution: int, device: torch.device, dtype: torch.dtype):
    """A denoiser-only SD3/FLUX policy with random weights of the published (or tiny) config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

    from aegpo.models.flux import FluxPolicy
    from aegpo.models.pretrained_params import PretrainedParams
    from aegpo.models.sd3 import SD3Policy

    cls, config, policy_cls = {
        "sd3": (SD3Transformer2DModel, TINY_SD3 if tiny else SD35_MEDIUM, SD3Policy),
        "flux": (FluxTransformer2DModel, TINY_FLUX if tiny else FLUX1_DEV, FluxPolicy),
    }[kind]
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else old)
    try:
        with torch.device(device):
            transformer = cls(**config)
    finally:
        torch.set_default_dtype(old)
    transformer.to(device=device)  # buffers made from numpy (SD3's positional table) ignore the device context
    if any(p.dtype != dtype for p in transformer.parameters()):  # rare: a module that ignores the default dtype
        transformer.to(dtype=dtype)
    with torch.no_grad():  # diffusers zero-initialises gates/outputs: give them weights so outputs are non-trivial
        for p in transformer.parameters():
            if p.ndim >= 1 and not p.any():
                p.normal_(0.0, 0.02)
    pipe = types.SimpleNamespace(transformer=transformer, vae=None,
                                 scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    text_tokens = 24 if tiny else TEXT_TOKENS[kind]
    params = PretrainedParams(resolution=resolution, dtype={torch.bfloat16: "bfloat16", torch.float16: "float16"}
                              .get(dtype, "float32"), gradient_checkpointing=True)
    policy = policy_cls(pipe, params)
    return policy, text_tokens


def random_conditioning(policy, prompts: int, text_tokens: int, seed: int = 0):
    from aegpo.models.base import Conditioning

    cfg = policy.transformer.config
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(prompts, text_tokens, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(prompts, cfg.pooled_projection_dim, generator=g)
    return Conditioning({"states": states.to(policy.device, policy.dtype),
                         "pooled": pooled.to(policy.device, policy.dtype)})


# ----- correctness -----------------------------------------------------------------------------------------
@torch.no_grad()
def check_processors(policy, kind: str, cond, seed: int = 0) -> dict[str, Any]:
    """Recording processors vs diffusers' defaults on the first joint/double and single-stream attention."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    from aegpo.entropy.recorder import EntropyRecorder

    device, dtype = policy.device, policy.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    recorder = EntropyRecorder(method="fused")
    tf = policy.transformer
    dim = tf.config.num_attention_heads * tf.config.attention_head_dim
    h, w = policy.latent_shape[1:]
    results: dict[str, Any] = {}
    cases = []
    if kind == "sd3":
        n_img = (h // tf.config.patch_size) * (w // tf.config.patch_size)
        cases.append(("joint", tf.transformer_blocks[0].attn, JointAttnProcessor2_0(), n_img, {}))
    else:
        from aegpo.models.flux import image_ids

        n_img = (h // 2) * (w // 2)
        n_txt = cond.tensors["states"].shape[1]
        ids = torch.cat([torch.zeros(n_txt, 3, device=device), image_ids(h, w, device, torch.float32)])
        rope = tf.pos_embed(ids)
        policy.layout.text_tokens = n_txt
        cases.append(("double", tf.transformer_blocks[0].attn, FluxAttnProcessor(), n_img, {"image_rotary_emb": rope}))
        cases.append(("single", tf.single_transformer_blocks[0].attn, FluxAttnProcessor(), n_img + n_txt,
                      {"image_rotary_emb": rope}))
    for name, attn, default, n_hidden, extra in cases:
        hidden = torch.randn(1, n_hidden, dim, generator=g).to(device, dtype)
        inputs = {"hidden_states": hidden, **extra}
        if name != "single":
            inputs["encoder_hidden_states"] = torch.randn(1, cond.tensors["states"].shape[1], dim,
                                                          generator=g).to(device, dtype)
        original = attn.processor
        try:
            attn.set_processor(default)
            expected = attn(**inputs)
            attn.set_processor(policy.entropy_processor(recorder, 0, attn))
            recorder.layer_names = [name]  # one slot, set by hand (not installed on the model)
            with recorder.recording():
                got = attn(**inputs)
            entropy = recorder.collect()
        finally:
            attn.set_processor(original)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(expected, got))
        results[name] = {"equal": all(torch.equal(a, b) for a, b in zip(expected, got)), "max_abs_diff": diff,
                         "entropy_finite": bool(torch.isfinite(entropy).all())}
    return results


@torch.no_grad()
def check_entropy_backends(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, keys: int,
                           queries: int = 256, seed: int = 0) -> dict[str, float]:
    """Max |entropy − explicit| (nats) of the fused and chunked computations on random q/k of real sizes."""
    from aegpo.entropy.core import explicit_entropy, mean_query_entropy
    from aegpo.entropy.fused import fused_mean_query_entropy

    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(1, heads, queries, head_dim, generator=g) * 2).to(device, dtype)
    k = (torch.randn(1, heads, keys, head_dim, generator=g) * 2).to(device, dtype)
    scale = head_dim**-0.5
    ref = explicit_entropy(q.float(), k.float(), scale)
    fused = fused_mean_query_entropy(q, k, scale)
    chunked = mean_query_entropy(q, k, scale, chunk_size=64)
    return {"chunked_max_err": float((chunked - ref).abs().max()),
            "fused_max_err": float((fused - ref).abs().max()) if fused is not None else float("nan"),
            "fused_available": fused is not None}


# ----- one model --------------------------------------------------------------------------------------------
def recorder_for(variant: dict[str, Any], num_layers: int):
    from aegpo.entropy.recorder import EntropyRecorder

    layers = variant["layers"]
    if isinstance(layers, int):
        layers = list(range(0, num_layers, layers))
    return EntropyRecorder(layers=layers, query_stride=variant["query_stride"], method=variant["method"])


def measure_model(kind: str, args, device: torch.device, dtype: torch.dtype, emit) -> dict[str, Any]:
    from aegpo.models.base import LoraSpec
    from aegpo.policy_update import UpdateConfig, policy_update
    from aegpo.rollout import StepPlan, generate

    t_start = time.perf_counter()
    batch = args.batch[kind]
    policy, text_tokens = build_policy(kind, args.tiny, args.resolution, device, dtype)
    policy.add_lora(LoraSpec(32, 64.0, ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                        "to_add_out")))
    cond = random_conditioning(policy, batch, text_tokens)
    n_params = sum(p.numel() for p in policy.transformer.parameters())
    emit(f"[{kind}] {n_params / 1e9:.2f} B parameters, latent {policy.latent_shape}, {text_tokens} text tokens, "
         f"batch {batch}; built in {time.perf_counter() - t_start:.1f} s")
    out: dict[str, Any] = {"parameters": n_params, "batch": batch, "latent_shape": list(policy.latent_shape),
                           "text_tokens": text_tokens, "resolution": args.resolution}

    # forward FLOPs and speed (no grad, batch B)
    x = torch.randn(batch, *policy.latent_shape, device=device)
    sigma = torch.full((batch,), 0.7, device=device)
    counter = FlopCounter(policy.transformer)
    with torch.no_grad():
        policy.velocity(x, sigma, cond)
    counter.close()
    flops = counter.flops
    with torch.no_grad():
        seconds, v = timed(lambda: policy.velocity(x, sigma, cond), device, repeats=args.repeats + 1)
    out["forward"] = {"flops": flops, "seconds": seconds, "tflops": flops / seconds / 1e12}
    emit(f"[{kind}] forward: {flops / 1e12:.1f} TFLOP in {seconds * 1e3:.1f} ms = {flops / seconds / 1e12:.1f} TFLOP/s")

    # rollouts: recording off vs each variant, same seeds, interleaved
    steps = args.steps
    n = batch
    idx = torch.arange(n)
    seeds = torch.arange(n, dtype=torch.int64) + 1000
    sde = torch.zeros(n, steps, dtype=torch.bool)
    sde[:, : steps - 1] = True
    train = torch.zeros_like(sde)
    train[:, : min(2, steps - 1)] = True
    plan = StepPlan(sde, train)
    num_layers = len(policy.attention_modules())
    recorders = {name: recorder_for(v, num_layers) for name, v in VARIANTS.items()}
    times: dict[str, list[float]] = {"off": [], **{name: [] for name in VARIANTS}}
    peaks: dict[str, list[int]] = {name: [] for name in times}
    rollouts = {}

    def rollout(name: str):
        rec = recorders.get(name)
        if rec is not None:
            rec.install(policy)
        gc.collect()
        reset_peak(device)
        seconds, ro = timed(lambda: generate(policy, ["p"] * n, idx, seeds, plan, sde="flow", noise_level=0.7,
                                             shift=3.0, cond=cond, recorder=rec, batch_size=n), device)
        peaks[name].append(peak_bytes(device))
        if rec is not None:
            rec.uninstall()
        rollouts[name] = ro
        return seconds

    rollout("off")  # warm-up
    for _ in range(args.repeats):
        for name in times:
            if time.perf_counter() - t_start > args.model_budget_s and times[name]:
                continue  # over budget: keep the measurements made so far
            times[name].append(rollout(name))
    t_off, m_off = statistics.median(times["off"]), statistics.median(peaks["off"])
    nfe = n * steps
    out["rollout"] = {"seconds": t_off, "images_per_s": n / t_off, "steps": steps,
                      "tflops": flops / n * nfe / t_off / 1e12 if n else 0.0, "peak_gib": m_off / 2**30}
    variants = {}
    for name in VARIANTS:
        t, m = statistics.median(times[name]), statistics.median(peaks[name])
        variants[name] = {**VARIANTS[name], "seconds": t, "time_ratio": t / t_off - 1, "extra_gib": (m - m_off) / 2**30,
                          "layers_recorded": len(recorders[name].layer_names)}
    out["entropy_variants"] = variants
    emit(f"[{kind}] rollout ({n}×{steps} steps): {t_off:.2f} s, {n / t_off:.2f} images/s")

    # correctness
    ro = rollouts["off"]
    out["checks"] = {
        "processors": check_processors(policy, kind, cond),
        "entropy_backends": check_entropy_backends(device, dtype, policy.transformer.config.num_attention_heads,
                                                   policy.transformer.config.attention_head_dim,
                                                   keys=text_tokens
                                                   + (policy.latent_shape[1] * policy.latent_shape[2]) // 4),
        "rollout_log_prob_finite": bool(torch.isfinite(ro.log_prob).all()) and len(ro.log_prob) > 0,
        "entropy_finite": all(bool(torch.isfinite(r.entropy).all()) for k, r in rollouts.items() if k != "off"),
    }

    # one training step (LoRA, gradient checkpointing) over the rollout's trained transitions
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    advantages = torch.linspace(-1, 1, n)
    cfg = UpdateConfig(sde="flow", noise_level=0.7, clip_range=1e-4, kl_beta=0.0, max_grad_norm=1.0,
                       optimizer_steps=1, micro_batch=args.micro_batch[kind], inner_epochs=1)
    policy.transformer.train()
    gc.collect()
    reset_peak(device)
    seconds, stats = timed(lambda: policy_update(policy, optimizer, ro, advantages, cond, cfg,
                                                 torch.Generator().manual_seed(0)), device)
    policy.transformer.eval()
    transitions = int(stats["trained_transitions"])
    out["train"] = {"seconds": seconds, "transitions": transitions,
                    "seconds_per_transition": seconds / max(1, transitions),
                    "micro_batch": cfg.micro_batch, "peak_gib": peak_bytes(device) / 2**30,
                    "first_ratio_dev": stats["first_ratio_dev"], "loss_finite": math.isfinite(stats["loss"])}
    emit(f"[{kind}] train step ({transitions} transitions, micro-batch {cfg.micro_batch}): {seconds:.2f} s, "
         f"peak {out['train']['peak_gib']:.1f} GiB, first ratio dev {stats['first_ratio_dev']:.2e}")
    out["seconds_total"] = time.perf_counter() - t_start
    policy = optimizer = rollouts = ro = None  # free the model before the next one (closures hold these names)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ----- report ---------------------------------------------------------------------------------------------
def table(results: dict[str, dict[str, Any]], peak: float | None) -> str:
    def mfu(tflops: float) -> str:
        return f"{tflops / peak:.1%}" if peak else "n/a"

    lines = ["| model | measure | value |", "|---|---|---|"]
    for kind, r in results.items():
        f, ro, tr = r["forward"], r["rollout"], r["train"]
        lines += [
            f"| {kind} | forward TFLOP/s (MFU) | {f['tflops']:.1f} ({mfu(f['tflops'])}) |",
            f"| {kind} | rollout images/s, TFLOP/s (MFU) | {ro['images_per_s']:.2f}, {ro['tflops']:.1f} "
            f"({mfu(ro['tflops'])}) |",
            f"| {kind} | rollout peak memory | {ro['peak_gib']:.2f} GiB |",
            f"| {kind} | train step (LoRA, ckpt) | {tr['seconds']:.2f} s for {tr['transitions']} transitions, "
            f"peak {tr['peak_gib']:.2f} GiB |",
        ]
        for name, v in r["entropy_variants"].items():
            lines.append(f"| {kind} | entropy {name} ({v['layers_recorded']} layers) | "
                         f"+{v['time_ratio']:.1%} time, +{v['extra_gib']:.3f} GiB |")
        checks = r["checks"]
        procs = ", ".join(f"{k}: {'equal' if v['equal'] else 'DIFF %.2e' % v['max_abs_diff']}"
                          for k, v in checks["processors"].items())
        eb = checks["entropy_backends"]
        lines.append(f"| {kind} | checks | processors {procs}; entropy err fused {eb['fused_max_err']:.1e} chunked "
                     f"{eb['chunked_max_err']:.1e} nats; log-probs finite {checks['rollout_log_prob_finite']}; "
                     f"first ratio dev {tr['first_ratio_dev']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m aegpo.bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for summary.json, table.md and gpu_check.log")
    p.add_argument("--tiny", action="store_true", help="toy configs (CPU-friendly; for tests)")
    p.add_argument("--models", default="sd3,flux", help="comma list of sd3, flux")
    p.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 1024; tiny 64)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps per rollout (default 6; tiny 3)")
    p.add_argument("--batch-sd3", type=int, default=None, help="rollout batch for SD3.5-M (default 8; tiny 2)")
    p.add_argument("--batch-flux", type=int, default=None, help="rollout batch for FLUX.1-dev (default 4; tiny 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 2; tiny 1)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the card's dense bf16 peak")
    p.add_argument("--model-budget-s", type=float, default=240.0,
                   help="stop adding timing repeats for a model after this")
    args = p.parse_args(argv)
    args.resolution = args.resolution or (64 if args.tiny else 1024)
    args.steps = args.steps or (3 if args.tiny else 6)
    args.repeats = args.repeats or (1 if args.tiny else 2)
    args.batch = {"sd3": args.batch_sd3 or (2 if args.tiny else 8), "flux": args.batch_flux or (2 if args.tiny else 4)}
    args.micro_batch = {"sd3": 2 if args.tiny else 4, "flux": 2}
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = (out_dir / "gpu_check.log").open("w", encoding="utf-8")

    def emit(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or (card_peak_tflops(card) if device.type == "cuda" else None)
    emit(f"device {card} ({device}), dtype {dtype}, torch {torch.__version__}, bf16 peak {peak} TFLOP/s, "
         f"{'tiny' if args.tiny else 'published'} configs")
    measured = matmul_tflops(device, dtype, n=256 if args.tiny else 8192, repeats=2 if args.tiny else 10)
    emit(f"measured dense matmul: {measured:.1f} TFLOP/s")
    results: dict[str, dict[str, Any]] = {}
    for kind in [m.strip() for m in args.models.split(",") if m.strip()]:
        if kind not in ("sd3", "flux"):
            raise SystemExit(f"--models: unknown model {kind!r} (expected sd3, flux)")
        results[kind] = measure_model(kind, args, device, dtype, emit)
    report = table(results, peak)
    emit(report)
    head = results.get("sd3") or next(iter(results.values()))
    rec = head["entropy_variants"][RECOMMENDED]
    checks_ok = all(
        all(v["equal"] for v in r["checks"]["processors"].values()) and r["checks"]["rollout_log_prob_finite"]
        and r["checks"]["entropy_finite"] and r["train"]["loss_finite"] for r in results.values())
    summary = {
        "card": card, "device": str(device), "dtype": str(dtype), "torch": torch.__version__, "tiny": args.tiny,
        "bf16_peak_tflops": peak, "measured_matmul_tflops": measured,
        "mfu": head["rollout"]["tflops"] / peak if peak else None,
        "mfu_forward": head["forward"]["tflops"] / peak if peak else None,
        "rollout_vs_measured_matmul": head["rollout"]["tflops"] / measured if measured else None,
        "entropy_variant": RECOMMENDED, "entropy_time_ratio": rec["time_ratio"], "entropy_extra_gib": rec["extra_gib"],
        "goals": {"entropy_time_ratio<=0.02": rec["time_ratio"] <= 0.02,
                  "entropy_extra_gib<=0.2": rec["extra_gib"] <= 0.2,
                  "mfu>=0.5": (head["rollout"]["tflops"] / peak >= 0.5) if peak else None},
        "checks_passed": checks_ok,
        "models": results,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(report + "\n", encoding="utf-8")
    emit(f"checks passed: {checks_ok}; wrote {out_dir / 'summary.json'}")
    log_file.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    summary = run(argv)
    return 0 if summary["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
