"""HPS v2.1 (Human Preference Score, Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on HPD v2.

score = cos(image features, text features) (≈ 0.2–0.35), as HPSv2's own scorer
(DanceGRPO/MixGRPO use it unscaled). The published checkpoint `HPS_v2.1_compressed.pt`
(hub `xswu/HPSv2`) is an open_clip state dict; this module maps its keys onto transformers'
`CLIPModel` (no open_clip needed):

    open_clip                                  transformers CLIPModel
    token_embedding / positional_embedding  →  text_model.embeddings.{token,position}_embedding
    transformer.resblocks.i.ln_1 / ln_2      →  text_model.encoder.layers.i.layer_norm1 / 2
    ….attn.in_proj_{weight,bias} (q;k;v)     →  ….self_attn.{q,k,v}_proj
    ….attn.out_proj, ….mlp.c_fc, ….mlp.c_proj →  ….self_attn.out_proj, ….mlp.fc1, ….mlp.fc2
    ln_final, text_projection (W, E)         →  text_model.final_layer_norm, text_projection.weight (E, W)
    visual.class_embedding, visual.positional_embedding, visual.conv1
                                             →  vision_model.embeddings.{class,position,patch}_embedding
    visual.ln_pre, visual.transformer.…, visual.ln_post, visual.proj (W, E)
                                             →  vision_model.pre_layrnorm, ….encoder…, post_layernorm,
                                                visual_projection (E, W)
    logit_scale                              →  logit_scale

Sizes are read from the tensors; head counts follow open_clip's configs (head width 64,
except 80 for width 1280 (ViT-H) and 88/104 for 1408/1664 (ViT-g/bigG)); GELU, LayerNorm eps 1e-5.
The text tower pools at the highest token id (open_clip's argmax rule: the end-of-text token).

Options (`reward.models.hpsv2`): `path` = the checkpoint file (or a folder holding it, or a
transformers-format folder written by `python -m aegpo.rewards.hpsv2 SRC.pt DST`), `tokenizer` =
a folder with the CLIP tokenizer (laion/CLIP-ViT-H-14-laion2B-s32B-b79K or openai/clip-vit-large-patch14:
the same BPE); defaults to `path` when that is a folder with tokenizer files.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from transformers import CLIPConfig, CLIPModel

from aegpo.rewards.clip_common import ClipEncoder, load_clip_encoder, load_tokenizer
from aegpo.rewards.images import CLIP_MEAN, CLIP_STD
from aegpo.rewards.model_base import ModelReward, ModelRewardOptions, RewardModelError
from aegpo.rewards.weights import PICKLE_SUFFIXES, load_state_dict

HEAD_WIDTH = {1280: 80, 1408: 88, 1664: 104}  # open_clip ViT-H/g/bigG vision towers; others use 64
TOWER_KEYS = {
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
IGNORED = {"attn_mask", "text.attn_mask"}


def _heads(width: int) -> int:
    return max(1, width // HEAD_WIDTH.get(width, 64))


def _layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.ln_1\.weight$")
    found = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(found) + 1 if found else 0


def open_clip_config(state: dict[str, torch.Tensor]) -> CLIPConfig:
    """transformers CLIPConfig of an open_clip ViT state dict (sizes from tensor shapes)."""
    v_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    t_vocab, t_width = state["token_embedding.weight"].shape
    vision = dict(hidden_size=v_width,
                  intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                  num_hidden_layers=_layers(state, "visual.transformer.resblocks."),
                  num_attention_heads=_heads(v_width),
                  image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-5)
    text = dict(vocab_size=t_vocab, hidden_size=t_width,
                intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=_layers(state, "transformer.resblocks."), num_attention_heads=_heads(t_width),
                max_position_embeddings=state["positional_embedding"].shape[0], hidden_act="gelu", layer_norm_eps=1e-5,
                eos_token_id=2)  # 2 selects transformers' legacy argmax pooling = open_clip's rule
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["text_projection"].shape[1])


def _tower(state: dict[str, torch.Tensor], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(layers):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for a, b in TOWER_KEYS.items():
            out[d + b] = state[s + a]
        for kind in ("weight", "bias"):
            q, k, v = state[f"{s}attn.in_proj_{kind}"].chunk(3, dim=0)
            out.update({f"{d}self_attn.q_proj.{kind}": q, f"{d}self_attn.k_proj.{kind}": k,
                        f"{d}self_attn.v_proj.{kind}": v})
    return out


def open_clip_to_transformers(state: dict[str, torch.Tensor]) -> tuple[CLIPConfig, dict[str, torch.Tensor]]:
    """(config, CLIPModel state dict) of an open_clip ViT state dict; unknown keys are an error."""
    config = open_clip_config(state)
    tl, vl = config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers
    out = {
        "logit_scale": state["logit_scale"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t().contiguous(),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
    }
    out.update(_tower(state, "transformer.resblocks.", "text_model.encoder.layers.", tl))
    out.update(_tower(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", vl))
    direct = {"logit_scale", "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
              "text_projection", "visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
              "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
              "visual.proj"}
    tower = re.compile(r"(visual\.)?transformer\.resblocks\.\d+\.(.+)$")
    tower_names = set(TOWER_KEYS) | {"attn.in_proj_weight", "attn.in_proj_bias"}
    unknown = sorted(k for k in state if k not in direct and k not in IGNORED
                     and not ((m := tower.match(k)) and m.group(2) in tower_names))
    if unknown:
        raise ValueError(f"open_clip state dict has keys this mapping does not know: {unknown[:5]}")
    return config, out


def clip_from_open_clip(state: dict[str, torch.Tensor]) -> CLIPModel:
    """A transformers CLIPModel carrying the weights of an open_clip ViT state dict."""
    config, hf_state = open_clip_to_transformers(state)
    model = CLIPModel(config)
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"open_clip → CLIPModel mapping incomplete: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model


def _checkpoint_in(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.suffix in (*PICKLE_SUFFIXES, ".safetensors"))
    return files[0] if len(files) == 1 else None


class HPSv2Options(ModelRewardOptions):
    tokenizer: str | None = Field(
        None, description="Folder with the CLIP BPE tokenizer files (laion/CLIP-ViT-H-14-laion2B-s32B-b79K); null = "
        "path when it is a folder with them.")


class HPSv2Reward(ModelReward):
    name = "hpsv2"
    Options = HPSv2Options
    source_hint = "hub: xswu/HPSv2 file HPS_v2.1_compressed.pt + tokenizer of laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def load(self) -> None:
        where = f"reward.models.{self.name}"
        path = self.resolve(self.options.path, "path")
        tok_dir = self.resolve(self.options.tokenizer, "tokenizer", "dir") if self.options.tokenizer else path
        if not tok_dir.is_dir():
            raise RewardModelError(f"{where}.tokenizer: required when path is a file "
                                   "(a folder with the CLIP tokenizer)")
        if path.is_dir() and (path / "config.json").is_file():  # transformers format (converted)
            self.clip = load_clip_encoder(path, tok_dir, self.device, self.dtype, where)
            return
        file = _checkpoint_in(path) if path.is_dir() else path
        if file is None:
            raise RewardModelError(f"{where}.path: {path} holds neither config.json nor exactly one checkpoint file")
        state = self.load_weights(file)
        try:
            model = clip_from_open_clip(state)
        except (KeyError, ValueError) as err:
            raise RewardModelError(f"{where}.path: {file} is not an open_clip ViT checkpoint ({err})") from None
        tokenizer = load_tokenizer(tok_dir, where)
        self.clip = ClipEncoder(model.to(self.device, self.dtype), tokenizer, model.config.vision_config.image_size,
                                CLIP_MEAN, CLIP_STD)

    def score_batch(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        return (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)


def convert(src: str | Path, dst: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write the open_clip checkpoint `src` as a transformers CLIPModel folder `dst` (safetensors)."""
    model = clip_from_open_clip(load_state_dict(src))
    dst = Path(dst)
    model.save_pretrained(str(dst))
    if tokenizer is not None:
        for f in Path(tokenizer).iterdir():
            if f.is_file() and ("token" in f.name
                                or f.name in ("vocab.json", "merges.txt", "preprocessor_config.json")):
                shutil.copy2(f, dst / f.name)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Convert HPS_v2.1_compressed.pt (open_clip) to a transformers CLIPModel folder.")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--tokenizer", help="folder whose tokenizer files are copied into DST")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.src, args.dst, args.tokenizer)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
