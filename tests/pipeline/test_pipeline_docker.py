"""docker/ cannot be built here: check that the image and the stack reference files, commands and
settings that exist, and that requirements.lock pins what pyproject pins."""

from __future__ import annotations

import re
import shlex

import yaml

from pipeline_helpers import REPO, VENV_BIN

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
LOCK = (REPO / "requirements.lock").read_text()


def _produced_later() -> set[str]:
    """Files the image copies that other steps provide: DVC stage outputs, and pyproject's readme."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in dvc["stages"].values() for o in s.get("outs", [])}
    return {*(o.split("/")[0] for o in outs), "README.md"}


def test_dockerfile_copies_files_that_exist():
    later = _produced_later()
    sources = [src for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.M) for src in shlex.split(line)[:-1]]
    assert "requirements.lock" in sources and "aegpo" in sources and "flows" in sources
    for src in sources:
        assert (REPO / src).exists() or src in later, f"docker/Dockerfile copies {src}, which does not exist"
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M).group(1)
    assert (VENV_BIN / yaml.safe_load(cmd)[0]).exists()
    assert "pip install" in DOCKERFILE and "requirements.lock" in DOCKERFILE and "--no-deps" in DOCKERFILE


def test_compose_services_run_commands_that_exist():
    services = COMPOSE["services"]
    assert {"s3", "prefect-server", "mlflow", "worker-gpu0"} <= set(services)
    for name, svc in services.items():
        if svc.get("image") != "aegpo-worker":
            continue
        argv = svc["command"]
        if argv[0] == "sh":
            argv = shlex.split(argv[2].split("&&")[0])
        assert (VENV_BIN / argv[0]).exists() or argv[0] == "python", f"{name}: no command {argv[0]}"
    from mlflow.cli import cli as mlflow_cli

    options = {o for p in mlflow_cli.commands["server"].params for o in p.opts}
    for opt in (a for a in services["mlflow"]["command"] if a.startswith("--")):
        assert opt in options, f"mlflow server has no option {opt}"
    worker = services["worker-gpu0"]
    assert "prefect-server:4200" in worker["environment"]["PREFECT_API_URL"]
    assert worker["environment"]["MLFLOW_TRACKING_URI"].endswith(":5000")
    assert "aegpo-gpu" in worker["command"][2]
    pool = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    assert pool == "aegpo-gpu"


def test_compose_settings_are_the_ones_aegpo_reads():
    storage = (REPO / "flows" / "storage.py").read_text()
    env = {**COMPOSE["x-aegpo-env"], **COMPOSE["services"]["worker-gpu0"]["environment"]}
    for key in env:
        if key.startswith("AEGPO_"):
            assert f'"{key}"' in storage, f"flows.storage does not read {key}"


def test_lock_pins_torch_and_the_pipeline_stack():
    import tomllib

    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", LOCK, re.M))
    assert pins["torch"] == "2.13.0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["pipeline"],
                *project["optional-dependencies"]["dev"]]
    for dep in declared:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", dep)
        if m:
            assert pins.get(m.group(1)) == m.group(3), (f"requirements.lock pins {m.group(1)} "
                                                        f"{pins.get(m.group(1))}, pyproject {m.group(3)}")
