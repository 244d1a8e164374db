#!/usr/bin/env python
"""Print a preset's overrides as `-S key=value` arguments for `aegpo train`, `aegpo pipeline train` or `dvc exp run`.

    aegpo train $(python scripts/preset.py flow-grpo-geneval-sd3) -S model.kind=sd3 ...
    python scripts/preset.py --list

Presets live in presets/<name>.yaml: `overrides` (the `dvc exp run -S` grammar), `source`, `not_reproduced`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

PRESETS = Path(__file__).resolve().parents[1] / "presets"


def load(name: str) -> list[str]:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise SystemExit(f"no preset {name!r} in {PRESETS} (known: {known})")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    overrides = doc.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SystemExit(f"{path}: `overrides` must be a list of key=value strings")
    return overrides


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--list":
        print("\n".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))))
        return 0
    print(" ".join(f"-S {shlex.quote(o)}" for o in load(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
