"""`aegpo pretrain`: train the built-in base policy by flow matching on rendered (image, caption) pairs.

Data is infinite and generated on the fly: a train-split prompt, a random correct
render of it (aegpo.shapes.render), and a caption (the prompt, with 'one' for
'a' now and then, or empty with probability `caption_dropout`). Loss: MSE between
the predicted velocity and ε − x0 at x_σ = (1 − σ)·x0 + σ·ε. The denoiser and the
text encoder train together; an EMA of both is what gets shipped.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aegpo.checkpoint import save_base
from aegpo.config import Params, flatten
from aegpo.models.tiny_mmdit import TinyMMDiTConfig, TinyMMDiTPolicy
from aegpo.run_lock import hold_pretrain_folders
from aegpo.shapes.prompts import parse_prompt, split_prompts
from aegpo.shapes.render import render
from aegpo.shapes.spec import Scene

log = logging.getLogger(__name__)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's prompt, with singular 'a' written 'one' in 20% of captions."""
    return scene.text("one" if rng.random() < 0.2 else "a")


class ShapesStream:
    """Batches of (uint8 images (B, 32, 32, 3), captions) from the train split.

    `mix`: "uniform" draws train prompts uniformly (98% of them are compound or relation prompts);
    "balanced" first draws the prompt kind (single / compound / relation) uniformly, so single
    objects, where shapes are learnt, are a third of the data. `grid`, `size`: layouts as in
    aegpo.shapes.render.place (a subset of the spec's).
    """

    def __init__(self, seed: int, caption_dropout: float, mix: str = "uniform", grid: int = 1, size: int = 0) -> None:
        self.scenes = [parse_prompt(p) for p in split_prompts()["train"]]
        self.rng = np.random.default_rng(seed)
        self.caption_dropout = caption_dropout
        self.mix = mix
        self.grid, self.size = grid, size
        kinds: dict[str, list[int]] = {}
        for i, scene in enumerate(self.scenes):
            kinds.setdefault(scene.kind, []).append(i)
        self.by_kind = [np.asarray(v) for _, v in sorted(kinds.items())]

    def _pick(self, size: int) -> np.ndarray:
        if self.mix == "uniform":
            return self.rng.integers(0, len(self.scenes), size=size)
        kinds = self.rng.integers(0, len(self.by_kind), size=size)
        return np.array([self.by_kind[k][self.rng.integers(0, len(self.by_kind[k]))] for k in kinds])

    def batch(self, size: int) -> tuple[np.ndarray, list[str]]:
        picks = self._pick(size)
        images = np.stack([render(self.scenes[i], self.rng, self.grid, self.size) for i in picks])
        caps = ["" if self.rng.random() < self.caption_dropout else caption(self.scenes[i], self.rng) for i in picks]
        return images, caps


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then constant or cosine decay to 10% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def flow_matching_loss(policy: TinyMMDiTPolicy, images: np.ndarray, caps: list[str], sigma_sampling: str,
                       gen: torch.Generator) -> torch.Tensor:
    x0 = policy.encode_images(images)
    noise = torch.randn(x0.shape, generator=gen)
    if sigma_sampling == "logit_normal":
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    else:
        sigma = torch.rand(x0.shape[0], generator=gen)
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    states, pooled = policy.text_states(policy.tokenize(caps))
    v = policy.denoise(xt, sigma, states, pooled)
    return torch.nn.functional.mse_loss(v, noise - x0)


def pretrain(params: Params, work_dir: str | Path = "runs/pretrain") -> Path:
    """Train from scratch per `params.pretrain`; write the EMA base checkpoint to `params.pretrain.out`.

    One writer at a time: `pretrain.out` and `work_dir` (the intermediate checkpoints) are both locked before any
    work; a second `aegpo pretrain` into either is refused (RunInUseError naming the folder and the holder's pid).
    """
    with hold_pretrain_folders(Path(params.pretrain.out), Path(work_dir)):
        return _pretrain(params, Path(work_dir))


def _pretrain(params: Params, work_dir: Path) -> Path:
    cfg = params.pretrain
    torch.manual_seed(cfg.seed)
    policy = TinyMMDiTPolicy(TinyMMDiTConfig(**cfg.arch.model_dump()))
    if cfg.init_from:
        from aegpo.checkpoint import load_policy

        policy.load_state_dict(load_policy(cfg.init_from).state_dict())
    policy.train()
    ema = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    stream = ShapesStream(cfg.seed, cfg.caption_dropout, cfg.prompt_mix, cfg.grid, cfg.object_size)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    meta = {"pretrain": {k: v for k, v in flatten(cfg).items()}}
    start = time.time()
    last = cfg.stop_at or cfg.steps  # stop_at truncates the run; the LR schedule still spans `steps`
    bar = tqdm(range(last), desc="pretrain", mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        images, caps = stream.batch(cfg.batch_size)
        loss = flow_matching_loss(policy, images, caps, cfg.sigma_sampling, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short warm-up of the EMA
            for k, v in policy.state_dict().items():
                ema[k].lerp_(v.detach(), 1 - decay) if v.dtype.is_floating_point else ema[k].copy_(v)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == last:
            snapshot = _ema_policy(policy, ema)
            info = {**meta, "step": step + 1, "seconds": round(time.time() - start, 1), "loss": loss.item()}
            path = Path(cfg.out) if step + 1 == last else work_dir / f"step-{step + 1:06d}"
            save_base(snapshot, path, info)
            log.info("step %d: loss %.4f, wrote %s", step + 1, loss.item(), path)
    return Path(cfg.out)


def _ema_policy(policy: TinyMMDiTPolicy, ema: dict[str, torch.Tensor]) -> TinyMMDiTPolicy:
    snapshot = TinyMMDiTPolicy(policy.config, policy.tokenizer)
    snapshot.load_state_dict(ema)
    return snapshot.eval()
