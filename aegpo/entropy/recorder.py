"""EntropyRecorder: installs recording attention processors on chosen layers and collects their values.

Usage::

    recorder = EntropyRecorder(layers="all", heads="all", keys="all")
    recorder.install(policy)
    with recorder.recording():
        v = policy.velocity(x, sigma, cond)
    ent = recorder.collect()          # (B, L, H) mean image-query entropy per layer and head
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from aegpo.entropy.core import mean_query_entropy
from aegpo.entropy.fused import fused_mean_query_entropy


class EntropyRecorder:
    """Collects per-sample, per-layer, per-head attention entropy of image-query rows.

    Args:
        layers: joint-attention layer indices (negative from the end) or "all".
        heads: head indices or "all".
        keys: "all" (softmax over every key) or "text" (over the text keys, renormalised).
        normalize: divide by log(number of keys) → [0, 1].
        query_stride: use every n-th image query (cheaper, approximate).
        chunk_size: image queries per log-sum-exp block.
        method: "chunked" (aegpo.entropy.core) or "fused" (aegpo.entropy.fused: one flash-attention call,
            falling back to chunked where no fused kernel applies).
    """

    def __init__(
        self,
        layers: Sequence[int] | str = "all",
        heads: Sequence[int] | str = "all",
        keys: str = "all",
        normalize: bool = False,
        query_stride: int = 1,
        chunk_size: int = 1024,
        method: str = "chunked",
    ) -> None:
        if keys not in ("all", "text"):
            raise ValueError(f"keys: expected 'all' or 'text', got {keys!r}")
        if method not in ("chunked", "fused"):
            raise ValueError(f"method: expected 'chunked' or 'fused', got {method!r}")
        self.method = method
        self.layers_spec, self.heads_spec = layers, heads
        self.keys, self.normalize = keys, normalize
        self.query_stride, self.chunk_size = query_stride, chunk_size
        self.active = False
        self.layer_names: list[str] = []
        self._values: dict[int, torch.Tensor] = {}
        self._originals: dict[str, object] = {}
        self._modules: dict[str, torch.nn.Module] = {}

    @classmethod
    def from_params(cls, p) -> EntropyRecorder:
        """From an `aegpo.config.EntropyParams`."""
        return cls(p.layers, p.heads, p.keys, p.normalize, p.query_stride, p.chunk_size, p.method)

    def install(self, policy) -> list[str]:
        """Put recording processors on the selected layers of `policy`; returns their module names."""
        modules = policy.attention_modules()
        n = len(modules)
        if self.layers_spec == "all":
            chosen = list(range(n))
        else:
            chosen = []
            for i in self.layers_spec:
                if not -n <= i < n:
                    raise ValueError(f"entropy.layers: layer {i} out of range for a model with {n} attention layers")
                chosen.append(i % n)
            chosen = sorted(set(chosen))
        self.uninstall()
        self.layer_names = []
        for slot, idx in enumerate(chosen):
            name, module = modules[idx]
            self._originals[name] = module.processor
            self._modules[name] = module
            module.set_processor(policy.entropy_processor(self, slot, module))
            self.layer_names.append(name)
        return self.layer_names

    def uninstall(self) -> None:
        for name, proc in self._originals.items():
            self._modules[name].set_processor(proc)
        self._originals.clear()
        self._modules.clear()

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self._values.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    @torch.no_grad()
    def record(self, slot: int, image_query: torch.Tensor, key: torch.Tensor, text_keys: slice, scale: float) -> None:
        """Called by processors: image_query (B, H, Qimg, D), key (B, H, N, D)."""
        heads = self.heads_spec
        if heads != "all":
            if max(heads) >= image_query.shape[1]:
                raise ValueError(f"entropy.heads: head {max(heads)} out of range ({image_query.shape[1]} heads)")
            idx = torch.as_tensor(list(heads), device=image_query.device)
            image_query, key = image_query.index_select(1, idx), key.index_select(1, idx)
        if self.keys == "text":
            key = key[:, :, text_keys]
            if key.shape[2] == 0:
                raise ValueError("entropy.keys=text, but this attention layer has no text keys")
        q = image_query[:, :, :: self.query_stride]
        ent = fused_mean_query_entropy(q, key, scale) if self.method == "fused" else None
        if ent is None:
            ent = mean_query_entropy(q, key, scale, self.chunk_size)
        if self.normalize:
            ent = ent / math.log(key.shape[2])
        self._values[slot] = ent

    def collect(self) -> torch.Tensor:
        """(B, L, H) values of the last recorded forward, layers in depth order."""
        missing = [n for i, n in enumerate(self.layer_names) if i not in self._values]
        if missing:
            raise RuntimeError(f"no entropy recorded for layers {missing}: was the forward run inside recording()?")
        return torch.stack([self._values[i] for i in range(len(self.layer_names))], dim=1)
