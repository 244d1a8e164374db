"""`aegpo bench ablations`: every variant is a valid one-key change of params.yaml; bad names fail early;
the table reads what the efficiency benchmark wrote. `aegpo inspect census` counts what it samples."""

from __future__ import annotations

import json
from pathlib import Path

from aegpo.bench.ablations import VARIANTS, ablation_table, variant_params
from aegpo.cli import build_parser, main
from aegpo.config import load_params

ROOT = Path(__file__).resolve().parents[2]


def test_each_variant_loads_and_changes_exactly_its_key():
    shipped = load_params(ROOT / "params.yaml")
    base = shipped.model_dump()
    for name, overrides in VARIANTS.items():
        changed = variant_params(shipped, name).model_dump()
        for override in overrides:
            section, key = override.split("=")[0].split(".")
            assert changed[section][key] != base[section][key], f"{name}: {override} is already the default"
            changed[section][key] = base[section][key]
        assert changed == base, f"{name} changes more than {overrides}"


def test_the_command_runs_every_variant_by_default():
    args = build_parser().parse_args(["bench", "ablations"])
    assert args.variants.split(",") == list(VARIANTS)


def test_unknown_variant_fails_before_running_anything(tmp_path, capsys):
    out = tmp_path / "ablations"
    assert main(["bench", "ablations", "--variants", "k3,nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown 'nope'" in err and "k3" in err
    assert not out.exists()  # no benchmark was started


def test_table_rows_come_from_the_efficiency_summaries():
    summary = json.loads((ROOT / "benchmarks/results/ablations/k3/summary.json").read_text())
    table = ablation_table([("k3", "aegpo.peaks_k=3", summary["strategies"]["aegpo"])], 78_000, [0, 1])
    s = summary["strategies"]["aegpo"]
    assert f"| k3 | aegpo.peaks_k=3 | {s['final_strict_mean']:.3f} ± {s['final_strict_std']:.3f} |" in table
    committed = (ROOT / "benchmarks/results/ablations/table.md").read_text()
    assert table.splitlines()[-1] in committed  # the same row as the published table


def test_census_counts_the_sampled_objects(tiny_base, tmp_path, capsys):
    prompts = tmp_path / "eval.txt"
    prompts.write_text("a red circle\ntwo blue squares\na green triangle left of a white square\n")
    assert main(["inspect", "census", "--checkpoint", str(tiny_base), "-S", f"eval.prompts={prompts}",
                 "-S", "eval.num_steps=2", "-S", "eval.samples_per_prompt=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"checkpoint {tiny_base}: 3 eval prompts × 2 images, 2 ODE steps, seed 1234"
    assert "objects asked for 10, detected" in out[3] and "of 6" in out[3]  # (1 + 2 + 2) objects × 2 images
    assert out[2].startswith("strict by prompt kind: ")


def test_census_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["inspect", "census", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
