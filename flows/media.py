"""What a person looks at in MLflow: captioned sample grids and the per-round allocation table.

The policy's images are small (32 × 32 for the built-in model), so a plain tile strip is
unreadable in the MLflow image viewer. Grids here are laid out one prompt per row, its samples
upscaled by an integer factor with nearest-neighbour resampling (no blur, every pixel the model
produced stays a visible block), with the prompt and its score written beside the row.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from aegpo.record import RoundRecord

TARGET_TILE = 96  # pixels per tile side after upscaling (×3 for 32-px images; large images are not upscaled)
MAX_ROWS = 16  # prompts shown in one grid (the eval split has 200; the rows table holds them all)
MAX_TILES = 8  # samples shown per prompt
CAPTION_WIDTH = 330  # pixels of text column left of each row
FONT_SIZE = 15
BACKGROUND, TEXT, MUTED = (255, 255, 255), (20, 20, 20), (110, 110, 110)


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C) uint8 images by an integer `factor` → (..., fH, fW, C)."""
    if factor < 1:
        raise ValueError(f"upscale factor must be ≥ 1, got {factor}")
    return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2) if factor > 1 else images


def scale_for(tile: int) -> int:
    """The integer factor that brings a `tile`-pixel image closest to TARGET_TILE without shrinking it."""
    return max(1, round(TARGET_TILE / max(1, tile)))


def _font(size: int = FONT_SIZE):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font (needs FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap of `text` to `width` pixels, at most `max_lines` lines (the last one ends in …)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".,") + " …"
    return lines


def captioned_grid(groups: Sequence[tuple[str, str, np.ndarray]], title: str = "",
                   max_tiles: int = MAX_TILES) -> np.ndarray:
    """One row per group: a caption (main line wrapped, then a grey detail line) and its tiles, upscaled.

    Args:
        groups: (caption, detail, tiles) with tiles uint8 (k, H, W, 3); every group the same H, W.
        title: a line above the rows.
        max_tiles: tiles shown per row (the first ones).
    Returns:
        uint8 (H_out, W_out, 3).
    """
    from PIL import Image, ImageDraw

    if not groups:
        raise ValueError("captioned_grid needs at least one group of images")
    h, w = groups[0][2].shape[1:3]
    f = scale_for(max(h, w))
    th, tw, gap = h * f, w * f, 4
    cols = max(1, min(max_tiles, max(len(g[2]) for g in groups)))
    font, small = _font(), _font(FONT_SIZE - 2)
    row_h = max(th, 4 * (FONT_SIZE + 4)) + 2 * gap
    top = (FONT_SIZE + 14) if title else gap
    width = CAPTION_WIDTH + cols * (tw + gap) + gap
    canvas = Image.new("RGB", (width, top + row_h * len(groups)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap * 2, 6), title, fill=TEXT, font=font)
    for i, (caption, detail, tiles) in enumerate(groups):
        y = top + i * row_h
        if i:
            draw.line([(0, y), (width, y)], fill=(225, 225, 225))
        lines = _wrap(draw, caption, font, CAPTION_WIDTH - 3 * gap)
        for j, line in enumerate(lines):
            draw.text((gap * 2, y + gap + j * (FONT_SIZE + 4)), line, fill=TEXT, font=font)
        if detail:
            draw.text((gap * 2, y + gap + len(lines) * (FONT_SIZE + 4)), detail, fill=MUTED, font=small)
        big = upscale(np.asarray(tiles[:cols], dtype=np.uint8), f)
        for k, tile in enumerate(big):
            canvas.paste(Image.fromarray(tile), (CAPTION_WIDTH + k * (tw + gap), y + gap))
    return np.asarray(canvas)


def _score_detail(row: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """'reward 0.42, strict 0.25, …': the row's scores in `keys` order (default: every number in the row)."""
    keys = keys if keys is not None else [k for k, v in row.items() if isinstance(v, (int, float))]
    return ", ".join(f"{k} {row[k]:.2f}" for k in keys if isinstance(row.get(k), (int, float)))


def eval_grid(images: np.ndarray, rows: Sequence[dict[str, Any]], samples_per_prompt: int,
              max_rows: int = MAX_ROWS, title: str = "", score_keys: Sequence[str] | None = None) -> np.ndarray:
    """The evaluation's samples, one row per prompt (the first `max_rows`), captioned with prompt and score.

    Args:
        images: uint8 (P·k, H, W, 3), prompt-major (the k samples of prompt 0 first), as aegpo.evaluate returns.
        rows: per-prompt results in the same prompt order ({'prompt', 'reward', <the reward's metrics>}).
        samples_per_prompt: k.
        score_keys: the row scores in the caption, in order (default: every number in the row).
    """
    k = max(1, int(samples_per_prompt))
    if len(images) != len(rows) * k:
        raise ValueError(f"eval grid: {len(images)} images for {len(rows)} prompts × {k} samples")
    shown = min(len(rows), max_rows)
    groups = [(rows[i]["prompt"], _score_detail(rows[i], score_keys), images[i * k:(i + 1) * k]) for i in range(shown)]
    more = f" (first {shown} of {len(rows)} prompts)" if shown < len(rows) else ""
    return captioned_grid(groups, (title or "Evaluation samples") + more)


def rollout_grid(images: np.ndarray, record: RoundRecord, max_rows: int = MAX_ROWS) -> np.ndarray:
    """A round's rollouts, one row per prompt group, captioned with the prompt, its rewards and its budget.

    Args:
        images: uint8 (N, H, W, 3) with contiguous groups in `record.per_prompt` order (aegpo.trainer).
        record: the round record (per_prompt: prompt, group_size, reward_mean, reward_std).
    """
    per_prompt = record.per_prompt
    if sum(p.group_size for p in per_prompt) != len(images):
        raise ValueError(f"rollout grid: {len(images)} images but the groups of round {record.round} "
                         f"hold {sum(p.group_size for p in per_prompt)}")
    delta = record.plan.get("delta_entropy")
    groups, start = [], 0
    for i, p in enumerate(per_prompt[:max_rows]):
        detail = f"reward {p.reward_mean:.2f} ± {p.reward_std:.2f}, {p.group_size} rollouts"
        if delta is not None and i < len(delta) and delta[i] is not None:
            detail += f", ΔH {delta[i]:+.3f}"
        groups.append((p.prompt, detail, images[start:start + p.group_size]))
        start += p.group_size
    more = f" (first {len(groups)} of {len(per_prompt)} prompts)" if len(groups) < len(per_prompt) else ""
    return captioned_grid(groups, f"Rollouts of round {record.round}{more}")


def tiles_of(grid: np.ndarray, n: int, tile: int | None = None, columns: int = 16) -> np.ndarray:
    """The n (tile × tile) images of a stored grid (flows.round_io.image_grid layout) → uint8 (n, t, t, 3)."""
    from flows.round_io import grid_tiles

    cols = max(1, min(columns, n))
    side = tile or grid.shape[1] // cols
    rows = -(-n // cols)
    if grid.shape[0] != rows * side or grid.shape[1] != cols * side:
        raise ValueError(f"a {grid.shape[1]}×{grid.shape[0]} grid does not hold {n} tiles of {side} px in "
                         f"{cols} columns")
    return grid_tiles(grid, n, (side, side), columns)


def plan_column(record: RoundRecord, name: str) -> list:
    """The plan's per-prompt column `name` (one value per prompt of the round); a None per prompt when the
    plan has no such column, or one of another length (a strategy that measures no entropy)."""
    values = record.plan.get(name)
    n = len(record.per_prompt)
    return list(values) if values is not None and len(values) == n else [None] * n


def allocation_rows(record: RoundRecord) -> list[dict[str, Any]]:
    """The round's allocation, one row per prompt: what a person asks of it first.

    Columns: key ("r<round> <prompt>": MLflow's table view groups rows by the first column and shows the second,
    so the pair makes one row per prompt and round, with its ΔEntropy), delta_entropy (None for strategies that
    measure none), budget (rollouts), explored_steps (the SDE steps of the group, space separated), round,
    prompt, reward_mean, prompt_id, base_entropy, current_entropy.
    """
    pp = record.per_prompt
    delta, base, current, steps = (plan_column(record, name) for name in
                                   ("delta_entropy", "base_entropy", "current_entropy", "chosen_steps"))
    r = record.round
    return [{"key": f"r{r} {p.prompt}", "delta_entropy": delta[i], "budget": p.group_size,
             "explored_steps": "" if steps[i] is None else " ".join(map(str, steps[i])), "round": r,
             "prompt": p.prompt, "reward_mean": p.reward_mean, "prompt_id": p.prompt_id,
             "base_entropy": base[i], "current_entropy": current[i]} for i, p in enumerate(pp)]
