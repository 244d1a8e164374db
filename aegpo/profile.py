"""Entropy probes and the cached base-entropy profile.

A **probe** runs one deterministic ODE trajectory per prompt, from noise seeded by the prompt
text and the probe seed only, with attention-entropy recording at every step. Because the base
profile and every later probe of the current policy start from the same noise, ΔEntropy
measures the change of the policy, not of the noise.

The **base profile** is the probe of the frozen base policy over a prompt set, stored as a
Parquet table (schema in aegpo.tables) under a cache key of (base checkpoint manifest digest,
prompt-set hash, probe parameters): it is computed once and reused by every run that shares them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from aegpo import distributed
from aegpo.rollout import Rollout, StepPlan, derive_seed, generate
from aegpo.tables import PROFILE_SCHEMA, read_metadata, read_table, with_metadata, write_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSpec:
    """Everything that changes a probe's numbers (and so the cache key)."""

    num_steps: int
    shift: float
    seed: int
    guidance_scale: float
    layers: tuple[int, ...] | str
    heads: tuple[int, ...] | str
    keys: str
    normalize: bool
    query_stride: int
    method: str = "chunked"

    @classmethod
    def from_params(cls, params) -> ProbeSpec:
        e = params.entropy
        tup = lambda v: v if isinstance(v, str) else tuple(v)  # noqa: E731
        return cls(params.sampler.num_steps, params.sampler.shift, params.aegpo.probe_seed,
                   params.model.guidance_scale, tup(e.layers), tup(e.heads), e.keys, e.normalize, e.query_stride,
                   e.method)


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def prompt_set_hash(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def probe_seeds(prompts: list[str], seed: int) -> torch.Tensor:
    return torch.tensor([derive_seed("probe", seed, prompt_hash(p)) for p in prompts], dtype=torch.int64)


@torch.no_grad()
def probe(policy, prompts: list[str], spec: ProbeSpec, recorder, batch_size: int = 64, progress: bool = False) -> Rollout:
    """One ODE trajectory per prompt with entropy at every step: rollout.entropy_layers (P, T, L)."""
    n = len(prompts)
    seeds = probe_seeds(prompts, spec.seed)
    if distributed.world_size() == 1 or n < distributed.world_size():
        return generate(policy, prompts, torch.arange(n), seeds, StepPlan.ode(n, spec.num_steps),
                        shift=spec.shift, recorder=recorder, batch_size=batch_size, progress=progress, decode=False)

    # data-parallel runs: each rank probes a slice of the prompts; every rank gets all of Entropy(t)
    def run(idx: torch.Tensor) -> dict:
        ro = generate(policy, prompts, idx, seeds[idx], StepPlan.ode(len(idx), spec.num_steps), shift=spec.shift,
                      recorder=recorder, batch_size=batch_size, progress=progress, decode=False)
        return {"entropy_layers": ro.entropy_layers, "nfe": ro.nfe, "sigmas": [ro.sigmas]}

    out = distributed.split_and_gather(n, run)
    return Rollout(prompts=list(prompts), prompt_index=torch.arange(n), seeds=seeds, sigmas=out["sigmas"][0],
                   plan=StepPlan.ode(n, spec.num_steps), final=torch.empty(0), images=np.zeros((n, 0, 0, 3), np.uint8),
                   trans_sample=torch.empty(0, dtype=torch.long), trans_step=torch.empty(0, dtype=torch.long),
                   x_t=torch.empty(0), x_next=torch.empty(0), log_prob=torch.empty(0), nfe=out["nfe"],
                   entropy_layers=out["entropy_layers"])


class EntropyProfile:
    """Entropy(t) per prompt: `layers[prompt]` (T, L); `entropy_t(prompts)` (P, T) mean over layers."""

    def __init__(self, layers: dict[str, np.ndarray], sigmas: np.ndarray, layer_names: list[str]) -> None:
        self.layers, self.sigmas, self.layer_names = layers, sigmas, layer_names

    def entropy_t(self, prompts: list[str]) -> np.ndarray:
        missing = [p for p in prompts if p not in self.layers]
        if missing:
            raise KeyError(f"base profile has no entry for {len(missing)} prompts, e.g. {missing[0]!r}")
        return np.stack([self.layers[p].mean(-1) for p in prompts])

    @classmethod
    def from_rollout(cls, prompts: list[str], rollout: Rollout, layer_names: list[str]) -> EntropyProfile:
        ent = rollout.entropy_layers.numpy()
        return cls({p: ent[i] for i, p in enumerate(prompts)}, rollout.sigmas[:-1].numpy(), layer_names)

    def to_table(self, prompts: list[str], seeds: torch.Tensor) -> pa.Table:
        t, n_layers = next(iter(self.layers.values())).shape
        rows: dict[str, list] = {f.name: [] for f in PROFILE_SCHEMA}
        for i, p in enumerate(prompts):
            for step in range(t):
                for layer in range(n_layers):
                    rows["prompt_id"].append(i)
                    rows["prompt"].append(p)
                    rows["prompt_hash"].append(prompt_hash(p))
                    rows["seed"].append(int(seeds[i]))
                    rows["step"].append(step)
                    rows["sigma"].append(float(self.sigmas[step]))
                    rows["layer"].append(layer)
                    rows["layer_name"].append(self.layer_names[layer])
                    rows["entropy"].append(float(self.layers[p][step, layer]))
        return pa.Table.from_pydict(rows, schema=PROFILE_SCHEMA)

    @classmethod
    def from_table(cls, table: pa.Table) -> EntropyProfile:
        cols = table.to_pydict()
        t = max(cols["step"]) + 1
        n_layers = max(cols["layer"]) + 1
        layers: dict[str, np.ndarray] = {}
        sigmas = np.zeros(t, np.float32)
        names = [""] * n_layers
        for p, s, layer, name, sig, e in zip(cols["prompt"], cols["step"], cols["layer"], cols["layer_name"],
                                             cols["sigma"], cols["entropy"]):
            layers.setdefault(p, np.zeros((t, n_layers), np.float32))[s, layer] = e
            sigmas[s], names[layer] = sig, name
        return cls(layers, sigmas, names)


def cache_key(base_digest: str, prompts: list[str], spec: ProbeSpec) -> str:
    blob = json.dumps({"base": base_digest, "prompts": prompt_set_hash(prompts), "probe": asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_or_compute_base_profile(base_policy, base_digest: str, prompts: list[str], spec: ProbeSpec, recorder,
                                 cache_dir: str | Path, progress: bool = False) -> tuple[EntropyProfile, Path, bool]:
    """(profile, parquet path, whether it was computed now). `base_policy` must compute the base policy."""
    key = cache_key(base_digest, prompts, spec)
    path = Path(cache_dir) / f"base-entropy-{key[:16]}.parquet"
    # data-parallel runs: rank 0 decides (its disk holds the cache) and writes; all ranks share the probe
    cached = distributed.broadcast_object(path.is_file() and read_metadata(path).get("cache_key") == key
                                          if distributed.is_main() else None)
    if cached and not distributed.is_main():
        return distributed.broadcast_object(None), path, False
    if cached:
        log.info("base-entropy profile: reusing %s", path)
        profile = EntropyProfile.from_table(read_table(path, PROFILE_SCHEMA))
        return distributed.broadcast_object(profile), path, False
    log.info("base-entropy profile: probing %d prompts -> %s", len(prompts), path)
    rollout = probe(base_policy, prompts, spec, recorder, progress=progress)
    profile = EntropyProfile.from_rollout(prompts, rollout, recorder.layer_names)
    table = with_metadata(profile.to_table(prompts, rollout.seeds), {
        "cache_key": key, "spec": {"base_manifest_sha256": base_digest, "prompt_set_sha256": prompt_set_hash(prompts),
                                   "probe": asdict(spec), "nfe": rollout.nfe}})
    with distributed.main_writes("base-entropy profile") as mine:
        if mine:
            write_table(table, path)
    return profile, path, True
