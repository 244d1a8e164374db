"""The GPU check script end to end in its CPU `--tiny` mode (the real run needs an H100/H200)."""

import json

from aegpo.bench import gpu


def test_gpu_check_tiny_end_to_end(tmp_path):
    summary = gpu.run(["--out", str(tmp_path), "--tiny", "--device", "cpu"])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["checks_passed"] is True and summary["checks_passed"] is True
    assert {"card", "entropy_time_ratio", "entropy_extra_gib", "mfu", "bf16_peak_tflops",
            "measured_matmul_tflops"} <= set(saved)
    assert saved["card"] == "cpu" and saved["mfu"] is None  # no bf16 peak for a CPU
    for kind in ("sd3", "flux"):
        model = saved["models"][kind]
        assert model["forward"]["flops"] > 0 and model["rollout"]["images_per_s"] > 0
        assert set(model["entropy_variants"]) == set(gpu.VARIANTS)
        assert model["train"]["transitions"] > 0 and model["train"]["first_ratio_dev"] < 1e-5
        assert all(p["equal"] for p in model["checks"]["processors"].values())
        assert model["checks"]["entropy_backends"]["fused_max_err"] < 1e-4
    assert set(saved["models"]["flux"]["checks"]["processors"]) == {"double", "single"}
    assert (tmp_path / "table.md").read_text().startswith("| model |")
    assert "checks passed: True" in (tmp_path / "gpu_check.log").read_text()


def test_flop_count_matches_the_formula():
    """Linear + attention FLOPs of one FLUX forward equal the closed form for the tiny config."""
    import torch

    policy, text_tokens = gpu.build_policy("flux", True, 64, torch.device("cpu"), torch.float32)
    cond = gpu.random_conditioning(policy, 1, text_tokens)
    counter = gpu.FlopCounter(policy.transformer)
    with torch.no_grad():
        policy.velocity(torch.randn(1, *policy.latent_shape), torch.tensor([0.5]), cond)
    counter.close()
    c = gpu.TINY_FLUX
    d = c["num_attention_heads"] * c["attention_head_dim"]
    img, txt = (policy.latent_shape[1] // 2) * (policy.latent_shape[2] // 2), text_tokens
    seq = img + txt
    attention = 4 * seq * seq * d * (c["num_layers"] + c["num_single_layers"])
    double = c["num_layers"] * (2 * (img + txt) * d * d * 4 + 2 * (img + txt) * d * 4 * d * 2 + 2 * 6 * d * d * 2)
    single = c["num_single_layers"] * (2 * seq * d * 3 * d + 2 * seq * d * 4 * d + 2 * seq * 5 * d * d + 2 * 3 * d * d)
    assert counter.flops > attention + double + single - 1  # every block counted (plus embedders, norm_out, proj_out)
    assert counter.flops < 1.2 * (attention + double + single)
