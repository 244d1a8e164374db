#!/usr/bin/env python
"""Build `.dvc/plots/offline.html`: DVC's plots page template with Vega inlined, so `dvc plots show` works offline.

DVC's default page loads vega, vega-lite and vega-embed from a CDN and renders blank without network.
This template carries the same versions DVC's renderer targets (dvc_render.vega), taken from the npm
registry with `npm pack`, inlined in <script> tags; `.dvc/config` points `plots.html_template` at it.
Rerun after upgrading dvc-render if it moves to other Vega versions:

    python scripts/vendor_vega.py            # needs npm and the registry once; writes the template
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots" / "offline.html"
# The versions dvc_render.vega.VegaRenderer.SCRIPTS loads (checked by tests/pipeline/test_pipeline_dvc_config.py).
PACKAGES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}
BUILDS = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>aegpo · DVC plots</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {vega_embed} from npm, inlined (BSD-3-Clause,
         University of Washington Interactive Data Lab): no network needed. Built by scripts/vendor_vega.py. -->
{scripts}
    <style>
        body {{ font-family: sans-serif; margin: 1.5em; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
        subprocess.run(["npm", "pack", "--silent", *specs], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        scripts = []
        for name, version in PACKAGES.items():
            with tarfile.open(Path(tmp) / f"{name}-{version}.tgz") as tar:
                member = tar.extractfile(f"package/build/{BUILDS[name]}")
                code = member.read().decode("utf-8")
            if "</script" in code.lower():
                raise SystemExit(f"{name}: the build contains '</script' and cannot be inlined")
            scripts.append(f"    <script type=\"text/javascript\">/* {name} {version} */\n{code}\n    </script>")
    page = PAGE.format(vega=PACKAGES["vega"], vega_lite=PACKAGES["vega-lite"], vega_embed=PACKAGES["vega-embed"],
                       scripts="\n".join(scripts))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
