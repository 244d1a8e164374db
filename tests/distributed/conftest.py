"""Fixtures of the distributed tests: tiny projects and a one-process reference run per strategy.

Every run here is a real process: `python -m aegpo.cli train`, or `torchrun` of it on CPU (gloo),
one thread per rank (dist_helpers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_helpers import run_ok, train_cmd, write_project


@pytest.fixture
def make_dist_project(tiny_base, tmp_path):
    """make(name, strategy=..., rounds=..., **train) → a project folder with its own params.yaml."""

    def make(name: str = "proj", strategy: str = "aegpo", rounds: int = 3, **train: object) -> Path:
        return write_project(tmp_path / name, tiny_base, strategy, rounds, **train)

    return make


@pytest.fixture(scope="session")
def one_rank_reference(tiny_base, tmp_path_factory):
    """reference(strategy, *overrides) → the project of a finished 3-round one-process run (once per session)."""
    done: dict[tuple[str, ...], Path] = {}

    def reference(strategy: str = "aegpo", *overrides: str) -> Path:
        key = (strategy, *overrides)
        if key not in done:
            proj = write_project(tmp_path_factory.mktemp(f"ref-{strategy}"), tiny_base, strategy)
            run_ok(train_cmd(*[a for o in overrides for a in ("-S", o)]), proj)
            done[key] = proj
        return done[key]

    return reference
