"""Model-based rewards on tiny random models in the published layouts: loading, shapes, batching, dtype, response."""

import numpy as np
import pytest
import torch

from aegpo.rewards import hpsv2 as hpsv2_module
from aegpo.rewards.images import CLIP_MEAN, CLIP_STD, pixel_values
from aegpo.rewards.model_base import RewardModelError
from aegpo.rewards.registry import build_reward
from aegpo.rewards.weights import convert, load_state_dict

from fixtures.tiny_rewards import IMAGE, aesthetic_head, clip_folder, imagereward_checkpoint, open_clip_checkpoint
from fixtures.tiny_tokenizers import bert_tokenizer, clip_tokenizer

PROMPTS = ["a red circle", "two blue squares", "a cat riding a horse", "a portrait of a woman", "a city at sunset"]
MODEL_REWARDS = ["pickscore", "hpsv2", "imagereward", "clipscore", "aesthetic"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("reward-models")
    refs = {"clip": clip_folder(root / "clip"), "hps": open_clip_checkpoint(root / "HPS_v2.1_compressed.pt"),
            "aesthetic": aesthetic_head(root / "sac+logos+ava1-l14-linearMSE.pth"),
            "imagereward": imagereward_checkpoint(root / "ImageReward.pt")}
    clip_tokenizer().save_pretrained(str(root / "clip-tokenizer"))
    bert_tokenizer().save_pretrained(str(root / "bert-base-uncased"))
    models = {
        "pickscore": {"path": "clip"},
        "clipscore": {"path": "clip"},
        "aesthetic": {"path": "clip", "head": "sac+logos+ava1-l14-linearMSE.pth"},
        "hpsv2": {"path": "HPS_v2.1_compressed.pt", "tokenizer": "clip-tokenizer"},
        "imagereward": {"path": "ImageReward.pt", "tokenizer": "bert-base-uncased"},
    }
    return root, models, refs


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (len(PROMPTS), 40, 48, 3), dtype=np.uint8)  # not square, not the model size


def build(assets, name, **options):
    root, models, _ = assets
    return build_reward(name, None, {name: {**models[name], **options}}, project_dir=root)


@pytest.mark.parametrize("name", MODEL_REWARDS)
def test_shapes_dtype_batching_and_response(assets, images, name):
    reward = build(assets, name, batch_size=2)
    result = reward(images, PROMPTS)
    scores = result.parts[name]
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert result.score.shape == (len(PROMPTS),) and np.allclose(result.score, scores)
    one_batch = build(assets, name, batch_size=64)(images, PROMPTS).parts[name]
    assert np.allclose(scores, one_batch, atol=1e-5)  # batching does not change scores
    assert np.ptp(scores) > 1e-4  # different images (and prompts) → different scores
    changed = images.copy()
    changed[0] = 255 - changed[0]
    assert abs(reward(changed[:1], PROMPTS[:1]).parts[name][0] - scores[0]) > 1e-5  # responds to the image
    same_image = np.repeat(images[:1], 2, axis=0)
    by_prompt = reward(same_image, PROMPTS[:2]).parts[name]
    if name == "aesthetic":
        assert by_prompt[0] == pytest.approx(by_prompt[1])  # prompt-free
    else:
        assert abs(by_prompt[0] - by_prompt[1]) > 1e-5  # responds to the prompt


def test_bfloat16_scores_close_to_float32(assets, images):
    f32 = build(assets, "pickscore")(images, PROMPTS).score
    bf16 = build(assets, "pickscore", dtype="bfloat16")(images, PROMPTS).score
    assert bf16.dtype == np.float64 and np.allclose(f32, bf16, atol=0.05 * np.abs(f32).max() + 0.05)


def _reference_clip(model, images, prompts):
    tok = clip_tokenizer()
    x = pixel_values(images, IMAGE)
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        i = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        t = model.text_projection(model.text_model(input_ids=enc.input_ids,
                                                   attention_mask=enc.attention_mask).pooler_output)
    i, t = i / i.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    return (i * t).sum(-1), i


def test_scores_equal_independent_references(assets, images):
    root, models, refs = assets
    cos, img_emb = _reference_clip(refs["clip"], images, PROMPTS)
    scale = float(refs["clip"].logit_scale.detach().exp())
    assert np.allclose(build(assets, "pickscore")(images, PROMPTS).score, (scale * cos).numpy(), atol=1e-5)
    assert np.allclose(build(assets, "clipscore")(images, PROMPTS).score, cos.numpy(), atol=1e-6)
    with torch.no_grad():
        aesthetic = refs["aesthetic"](img_emb).squeeze(-1)
    assert np.allclose(build(assets, "aesthetic")(images, PROMPTS).score, aesthetic.numpy(), atol=1e-5)
    hps_cos, _ = _reference_clip(refs["hps"], images, PROMPTS)  # the CLIPModel the open_clip checkpoint came from
    assert np.allclose(build(assets, "hpsv2")(images, PROMPTS).score, hps_cos.numpy(), atol=1e-5)
    vision, text, head = refs["imagereward"]
    tok = bert_tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        emb = vision(pixel_values=pixel_values(images, IMAGE, CLIP_MEAN, CLIP_STD)).last_hidden_state
        states = text(input_ids=enc.input_ids, attention_mask=enc.attention_mask, encoder_hidden_states=emb,
                      encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long)).last_hidden_state
        want = (head(states[:, 0]).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
    assert np.allclose(build(assets, "imagereward")(images, PROMPTS).score, want.numpy(), atol=1e-5)


def test_hps_checkpoint_forms_agree(assets, images, tmp_path):
    root, models, _ = assets
    expected = build(assets, "hpsv2")(images, PROMPTS).score
    st = convert(root / "HPS_v2.1_compressed.pt", tmp_path / "hps.safetensors")
    assert set(load_state_dict(st)) == set(load_state_dict(root / "HPS_v2.1_compressed.pt"))
    hf_dir = hpsv2_module.convert(st, tmp_path / "hps-transformers", tokenizer=root / "clip-tokenizer")
    for options in ({"path": str(st), "tokenizer": str(root / "clip-tokenizer")}, {"path": str(hf_dir)}):
        got = build_reward("hpsv2", None, {"hpsv2": options})(images, PROMPTS).score
        assert np.allclose(got, expected, atol=1e-5)


def test_missing_or_wrong_options_fail_at_build_time(assets, tmp_path):
    root, models, _ = assets
    with pytest.raises(RewardModelError, match=r"reward.models.pickscore.path is required.*PickScore_v1"):
        build_reward("pickscore", None, {})
    with pytest.raises(RewardModelError, match=r"reward.models.hpsv2.path: path .*missing.pt does not exist"):
        build_reward("hpsv2", None, {"hpsv2": {"path": str(tmp_path / "missing.pt"), "tokenizer": "x"}})
    with pytest.raises(RewardModelError, match=r"reward.models.aesthetic.head: Field required"):
        build_reward("aesthetic", None, {"aesthetic": {"path": str(root / "clip")}})
    with pytest.raises(RewardModelError, match=r"reward.models.clipscore.devise: unknown key"):
        build_reward("clipscore", None, {"clipscore": {"path": str(root / "clip"), "devise": "cpu"}})
    with pytest.raises(RewardModelError, match=r"reward.models.imagereward.tokenizer: .* tokens"):
        build_reward("imagereward", None, {"imagereward": {"path": str(root / "ImageReward.pt"),
                                                           "tokenizer": str(root / "clip-tokenizer")}})
    with pytest.raises(RewardModelError, match="not an open_clip ViT checkpoint"):
        build_reward("hpsv2", None, {"hpsv2": {"path": str(root / "ImageReward.pt"),
                                               "tokenizer": str(root / "clip-tokenizer")}})
    with pytest.raises(ValueError, match=r"unknown parts \['dense', 'strict'\]"):
        build_reward("clipscore", {"dense": 0.5, "strict": 0.5}, {"clipscore": {"path": str(root / "clip")}})


class Payload:
    """Any non-tensor object: a weights_only load must refuse it."""


def test_pickles_are_never_unpickled_beyond_weights(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "object": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        load_state_dict(tmp_path / "weights.npz")
