"""JPEG (in)compressibility (DDPO, Black et al. 2023): the size of the image saved as JPEG at quality 95.

`jpeg_incompressibility` = size in kB (rewards detail/noise), `jpeg_compressibility` = −size
in kB (rewards flat images). Flow-GRPO scales compressibility by 1/500: use a weight of 0.002.
No model weights; runs on the CPU with PIL.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from aegpo.rewards.base import Reward
from aegpo.rewards.images import check_images

QUALITY = 95


def jpeg_kilobytes(images: np.ndarray, quality: int = QUALITY) -> np.ndarray:
    """uint8 (N, H, W, 3) → (N,) float64 JPEG sizes in kB (1000 bytes)."""
    check_images(images)
    sizes = np.zeros(len(images))
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes[i] = buffer.tell() / 1000.0
    return sizes


class JpegIncompressibility(Reward):
    parts = ("jpeg_incompressibility",)

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__(weights if weights is not None else {self.parts[0]: 1.0})

    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        return {self.parts[0]: jpeg_kilobytes(images)}


class JpegCompressibility(JpegIncompressibility):
    parts = ("jpeg_compressibility",)

    def score_parts(self, images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        return {self.parts[0]: -jpeg_kilobytes(images)}
