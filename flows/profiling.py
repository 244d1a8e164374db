"""The profiling flow `aegpo-profile`: the base policy's Entropy(t) over the train prompts, cached.

    python -m aegpo.cli pipeline profile --out artifacts/base_entropy.parquet
    prefect deployment run 'aegpo-profile/gpu'

The profile is keyed on (base checkpoint manifest, prompt set, probe parameters): the task's
Prefect cache and the store's keyed file (`<aegpo.cache_dir>/base-entropy-<key>.parquet`) both
make a second run with the same key cost nothing.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.spec import prepare_run, resolve
from flows.storage import open_storage
from flows.tasks import profile_base_entropy


@flow(name="aegpo-profile", log_prints=True)
def profile_flow(params_path: str | None = "params.yaml", overrides: list[str] | None = None, project_dir: str = ".",
                 out: str | None = None, storage_uri: str | None = None, refresh: bool = False) -> dict[str, Any]:
    """Compute (or reuse) the base-entropy profile; copy it to `out` (a local file) when given."""
    spec = prepare_run(params_path, overrides or [], project_dir, storage_uri=storage_uri, need_eval_prompts=False,
                       need_tracking=False)
    task = profile_base_entropy.with_options(refresh_cache=True) if refresh else profile_base_entropy
    manifest = task(spec)
    storage = open_storage(spec.storage_uri, spec.project)
    if not storage.exists(manifest["key"]):
        manifest = profile_base_entropy.with_options(refresh_cache=True)(spec)
    if out:
        storage.get_file(manifest["key"], resolve(spec.project, out))
    return manifest
