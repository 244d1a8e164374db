"""Image preprocessing for reward models without torchvision (PIL + torch).

`resize_center_crop` reproduces torchvision's `Resize(size, BICUBIC)` (shorter side to
`size`, longer side truncated) followed by `CenterCrop(size)` on PIL images, which is what
CLIP, open_clip (HPS), BLIP (ImageReward) and transformers' PIL image processors do.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        got = getattr(images, "shape", type(images).__name__), getattr(images, "dtype", "")
        raise ValueError(f"reward: expected uint8 images (N, H, W, 3), got {got}")


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) → uint8 (size, size, 3): bicubic resize of the shorter side, then a centre crop."""
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(size * long / short)
        new_h, new_w = (size, new_long) if h <= w else (new_long, size)
        pil = Image.fromarray(image)
        if (new_h, new_w) != (h, w):
            pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        image = np.asarray(pil.crop((left, top, left + size, top + size)))
    return image


def pixel_values(images: np.ndarray, size: int, mean=CLIP_MEAN, std=CLIP_STD,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) → normalised float (N, 3, size, size) on `device` in `dtype`."""
    check_images(images)
    batch = np.stack([resize_center_crop(im, size) for im in images])
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)
