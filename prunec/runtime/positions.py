"""Position ids the decoder graph takes: 1-D token positions, or Qwen2-VL's 3-D M-RoPE."""

from __future__ import annotations

import numpy as np


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """1-D position ids that skip left padding: the count of real tokens before each one."""
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def mrope_positions(
    ids: np.ndarray, image_token_id: int, grid: tuple[int, int, int]
) -> tuple[np.ndarray, int]:
    """M-RoPE positions [3, len(ids)] for one unpadded prompt, and the next token's position.

    Text tokens advance all three axes together. Each run of image tokens is one image whose
    `grid` = (t, h, w) merged patches get (start + t, start + row, start + column); the text
    after it resumes at start + max(h, w). This is transformers' `get_rope_index` for images.
    """
    t, h, w = grid
    parts: list[np.ndarray] = []
    current = 0
    i = 0
    ids = np.asarray(ids).reshape(-1)
    while i < len(ids):
        j = i
        is_image = ids[i] == image_token_id
        while j < len(ids) and (ids[j] == image_token_id) == is_image:
            j += 1
        if not is_image:
            parts.append(np.broadcast_to(np.arange(j - i) + current, (3, j - i)))
            current += j - i
        else:
            for start in range(i, j, t * h * w):  # consecutive images share one run
                tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
                parts.append(np.stack([tt, hh, ww]).reshape(3, -1) + current)
                current += max(h, w)
                del start
        i = j
    positions = (
        np.concatenate(parts, axis=1).astype(np.int64) if parts else np.zeros((3, 0), np.int64)
    )
    return positions, int(positions.max()) + 1 if positions.size else 0
