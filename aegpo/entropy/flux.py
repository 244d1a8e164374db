"""FLUX attention processor that can also record attention entropy.

The attention output follows diffusers' `FluxAttnProcessor` (diffusers 0.42.1,
src/diffusers/models/transformers/transformer_flux.py) line for line, so outputs are
identical with recording on or off. FLUX differs from SD3 in three ways that matter here:

- projections are laid out (B, S, H, D) (heads after tokens), so they are transposed for the
  recorder, which takes (B, H, S, D);
- **text tokens come first** in the joint sequence, then image tokens;
- single-stream blocks (`single_transformer_blocks.*.attn`) see text + image already
  concatenated and get no `encoder_hidden_states`: the number of text tokens comes from a
  shared `FluxTokenLayout` the policy sets before each forward.

Entropy is taken after the rotary embedding (it is what the softmax sees), over the image-query
rows, with key set all tokens or the text tokens (the recorder's `keys`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections, apply_rotary_emb

from aegpo.entropy.recorder import EntropyRecorder


@dataclass
class FluxTokenLayout:
    """Text tokens at the front of the joint sequence of the current forward (set by the policy)."""

    text_tokens: int | None = None


class EntropyFluxAttnProcessor(FluxAttnProcessor):
    """Drop-in replacement of `FluxAttnProcessor` for one layer; records into `recorder` at slot `layer`."""

    def __init__(self, recorder: EntropyRecorder, layer: int, layout: FluxTokenLayout) -> None:
        super().__init__()
        self.recorder = recorder
        self.layer = layer
        self.layout = layout

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )

        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        if self.recorder.active:
            self._record(query, key, encoder_hidden_states, attn.head_dim)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())

            return hidden_states, encoder_hidden_states
        else:
            return hidden_states

    def _record(self, query, key, encoder_hidden_states, head_dim: int) -> None:
        """query/key (B, S, H, D) with text first → recorder.record(image queries (B, H, Q, D), keys (B, H, S, D))."""
        if encoder_hidden_states is not None:
            n_text = encoder_hidden_states.shape[1]
        elif self.layout.text_tokens is not None:
            n_text = self.layout.text_tokens
        else:
            raise RuntimeError("EntropyFluxAttnProcessor: a single-stream block needs the number of text tokens; "
                               "the policy must set FluxTokenLayout.text_tokens before the forward")
        q = query.transpose(1, 2)
        k = key.transpose(1, 2)
        self.recorder.record(self.layer, q[:, :, n_text:], k, slice(0, n_text), scale=head_dim**-0.5)

