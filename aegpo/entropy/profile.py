"""Entropy probes and the cached base-entropy profile.

A **probe** runs one deterministic ODE trajectory per prompt, from noise seeded by the prompt
text and the probe seed only, with attention-entropy recording at every step. Because the base
profile and every later probe of the current policy start from the same noise, ΔEntropy
measures the change of the policy, not of the noise.

The **base profile** is the probe of the frozen base policy, per prompt. Training builds it
lazily (`LazyBaseProfile`): the prompts a round draws are probed when first needed and kept in a
per-prompt store (`ProfileStore`: Parquet shards in one folder under a key of (base checkpoint
manifest digest, probe parameters)), so it grows as training goes and no prompt is probed twice by
any run that shares the base and the probe. `load_or_compute_base_profile` precomputes a whole
prompt set (the `profile` stage and flow) through the same store and writes it as one Parquet
table (schema in aegpo.tables) under a key that adds the prompt-set hash.
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
from aegpo.tables import PROFILE_SCHEMA, TableError, read_metadata, read_table, with_metadata, write_table

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
def probe(policy, prompts: list[str], spec: ProbeSpec, recorder, batch_size: int = 64,
          progress: bool = False) -> Rollout:
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
    """Entropy(t) per prompt: `layers[prompt]` (T, L); `entropy_t(prompts)` (P, T) mean over layers.

    `nfe_per_call`: denoiser evaluations per step of the policy that was probed (2 with CFG), so that
    `probe_nfe` states what probing prompts costs."""

    def __init__(self, layers: dict[str, np.ndarray], sigmas: np.ndarray, layer_names: list[str],
                 nfe_per_call: int = 1) -> None:
        self.layers, self.sigmas, self.layer_names = layers, sigmas, layer_names
        self.nfe_per_call = nfe_per_call

    def probe_nfe(self, num_prompts: int) -> int:
        """NFE of probing `num_prompts` prompts (T steps each), whether or not they are cached."""
        return num_prompts * len(self.sigmas) * self.nfe_per_call

    def ensure(self, prompts: list[str]) -> int:
        """Make sure `prompts` have entries; returns the NFE spent now (a precomputed profile spends none)."""
        self.entropy_t(prompts)
        return 0

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


def store_key(base_digest: str, spec: ProbeSpec) -> str:
    """Key of the per-prompt store: the base checkpoint and the probe parameters (no prompt set)."""
    blob = json.dumps({"base": base_digest, "probe": asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ProfileStore:
    """Per-prompt base-entropy cache: `cache_dir/base-entropy-store-<key>/part-<hash>.parquet`, one shard per
    probe batch (PROFILE_SCHEMA, `cache_key` in the metadata). Shards are written atomically and never
    rewritten, so parallel runs sharing the store at worst probe a prompt twice, never corrupt it; a shard
    that cannot be read (or has another key) is ignored with a warning and its prompts are probed again."""

    def __init__(self, cache_dir: str | Path, base_digest: str, spec: ProbeSpec) -> None:
        self.key = store_key(base_digest, spec)
        self.base_digest, self.spec = base_digest, spec
        self.dir = Path(cache_dir) / f"base-entropy-store-{self.key[:16]}"

    def load(self) -> EntropyProfile | None:
        """Every stored prompt, or None when the store is empty."""
        merged: EntropyProfile | None = None
        for path in sorted(self.dir.glob("part-*.parquet")):
            try:
                if read_metadata(path).get("cache_key") != self.key:
                    raise ValueError("another cache key")
                part = EntropyProfile.from_table(read_table(path, PROFILE_SCHEMA))
            except Exception as err:  # noqa: BLE001 - a bad shard is recomputed, never trusted
                log.warning("base-entropy store: ignoring %s (%s); its prompts will be probed again", path, err)
                continue
            if merged is None:
                merged = part
            else:
                merged.layers.update(part.layers)
        return merged

    def add(self, profile: EntropyProfile, prompts: list[str], nfe: int) -> Path:
        """Write the entries of `prompts` as one new shard."""
        path = self.dir / f"part-{prompt_set_hash(prompts)[:16]}.parquet"
        table = with_metadata(profile.to_table(prompts, probe_seeds(prompts, self.spec.seed)), {
            "cache_key": self.key, "spec": {"base_manifest_sha256": self.base_digest, "probe": asdict(self.spec),
                                            "prompts": len(prompts), "nfe": nfe}})
        return write_table(table, path)


class LazyBaseProfile(EntropyProfile):
    """The base profile, probed per prompt when first asked for (`entropy_t`, `ensure`).

    Args:
        probe_base: prompts → Rollout of the probe under the BASE policy (with LoRA: adapters disabled; with
            full fine-tuning: a frozen copy; see FlowPolicy.reference) from the fixed probe noise.
        store: the per-prompt cache shared with other runs (None: memory only).
        preload: a precomputed profile (e.g. the `profile` stage's table) whose entries are used as they are.
    """

    def __init__(self, probe_base, store: ProfileStore | None, nfe_per_call: int, num_steps: int,
                 preload: EntropyProfile | None = None) -> None:
        stored = store.load() if store is not None else None
        layers = dict(stored.layers) if stored is not None else {}
        first = preload or stored
        if preload is not None:
            layers.update(preload.layers)
        sigmas = first.sigmas if first is not None else np.zeros(num_steps, np.float32)
        super().__init__(layers, sigmas, list(first.layer_names) if first is not None else [], nfe_per_call)
        self.num_steps = num_steps
        self.probe_base, self.store = probe_base, store
        self.computed_nfe = 0  # NFE this object spent probing (cache hits are free here)

    def probe_nfe(self, num_prompts: int) -> int:
        return num_prompts * self.num_steps * self.nfe_per_call

    def ensure(self, prompts: list[str]) -> int:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.layers))
        if not missing:
            return 0
        log.info("base-entropy profile: probing %d new prompts", len(missing))
        rollout = self.probe_base(missing)
        part = EntropyProfile.from_rollout(missing, rollout, self.layer_names or [])
        if rollout.entropy_layers.shape[1] != self.num_steps:
            raise ValueError(f"base probe returned {rollout.entropy_layers.shape[1]} steps, expected {self.num_steps}")
        self.layers.update(part.layers)
        self.sigmas = part.sigmas
        self.computed_nfe += rollout.nfe
        if self.store is not None:
            self.store.add(part, missing, rollout.nfe)
        return rollout.nfe

    def set_layer_names(self, names: list[str]) -> None:
        if self.layer_names and list(self.layer_names) != list(names):
            raise ValueError(f"base profile layers {self.layer_names} differ from the recorder's {names}")
        self.layer_names = list(names)

    def entropy_t(self, prompts: list[str]) -> np.ndarray:
        self.ensure(prompts)
        return super().entropy_t(prompts)


def load_or_compute_base_profile(base_policy, base_digest: str, prompts: list[str], spec: ProbeSpec, recorder,
                                 cache_dir: str | Path, progress: bool = False) -> tuple[EntropyProfile, Path, bool]:
    """(profile, parquet path, whether it was computed now). `base_policy` must compute the base policy.

    The full precomputation of a prompt set: prompts already in the per-prompt store are not probed again,
    and the new ones are added to it (so later lazy runs reuse them)."""
    key = cache_key(base_digest, prompts, spec)
    path = Path(cache_dir) / f"base-entropy-{key[:16]}.parquet"
    # data-parallel runs: rank 0 decides (its disk holds the cache) and reads it; all ranks share the result
    profile = None
    if distributed.is_main() and path.is_file():
        try:
            if read_metadata(path).get("cache_key") == key:
                profile = EntropyProfile.from_table(read_table(path, PROFILE_SCHEMA))
                log.info("base-entropy profile: reusing %s", path)
        except (TableError, KeyError, ValueError) as err:  # a cache is only a cache: compute it again
            log.warning("base-entropy profile cache %s is damaged (%s); computing it again", path, err)
    profile = distributed.broadcast_object(profile)
    if profile is not None:
        return profile, path, False
    log.info("base-entropy profile: probing %d prompts -> %s", len(prompts), path)
    lazy = LazyBaseProfile(lambda ps: probe(base_policy, ps, spec, recorder, progress=progress),
                           ProfileStore(cache_dir, base_digest, spec), base_policy.nfe_per_call, spec.num_steps)
    lazy.set_layer_names(recorder.layer_names)
    lazy.ensure(prompts)
    profile = EntropyProfile({p: lazy.layers[p] for p in prompts}, lazy.sigmas, lazy.layer_names,
                             base_policy.nfe_per_call)
    table = with_metadata(profile.to_table(prompts, probe_seeds(prompts, spec.seed)), {
        "cache_key": key, "spec": {"base_manifest_sha256": base_digest, "prompt_set_sha256": prompt_set_hash(prompts),
                                   "probe": asdict(spec), "nfe": lazy.probe_nfe(len(prompts)),
                                   "nfe_spent_now": lazy.computed_nfe}})
    with distributed.main_writes("base-entropy profile") as mine:
        if mine:
            write_table(table, path)
    return profile, path, True
