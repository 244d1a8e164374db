"""scripts/ablations.py: every variant is a valid one-key change of params.yaml; bad names fail early."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from aegpo.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("ablations", ROOT / "scripts" / "ablations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_each_variant_loads_and_changes_exactly_its_key():
    base = load_params(ROOT / "params.yaml").model_dump()
    for name, overrides in _module().VARIANTS.items():
        changed = load_params(ROOT / "params.yaml", overrides).model_dump()
        for override in overrides:
            section, key = override.split("=")[0].split(".")
            assert changed[section][key] != base[section][key], f"{name}: {override} is already the default"
            changed[section][key] = base[section][key]
        assert changed == base, f"{name} changes more than {overrides}"


def test_unknown_variant_fails_before_running_anything(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/ablations.py", "--variants", "k3,nope"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "unknown 'nope'" in proc.stderr and "k3" in proc.stderr
    assert "+ " not in proc.stdout  # no benchmark was started
