"""Planar (non-360°) tiling: overlapping output tiles, their bicubic LQ inputs, feathered merge.

The bicubic upsample matches `torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`
(Keys, a = −0.75, border indices clamped), the upsample the model is trained behind.
"""

from __future__ import annotations

import numpy as np

from osr_sdk._bicubic import keys_weights


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering [0, length) with at least `overlap` px shared."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1
    # spread the tiles evenly so every overlap is at least `overlap` wide
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def bicubic_matrix(out_start: int, out_len: int, in_len: int, scale: float) -> tuple[np.ndarray, int]:
    """(out_len, span) float32 weights and the first input index: out = W @ input[first:first+span].

    Output pixel o (absolute index out_start + k) has its centre at input coordinate
    (o + 0.5) / scale − 0.5; indices outside the input are clamped to its border.
    """
    centre = (np.arange(out_start, out_start + out_len) + 0.5) / scale - 0.5
    base = np.floor(centre).astype(np.int64)
    t = centre - base
    taps = np.stack(keys_weights(t), axis=1)
    index = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_len - 1)
    first, last = int(index.min()), int(index.max())
    weights = np.zeros((out_len, last - first + 1))
    np.add.at(weights, (np.repeat(np.arange(out_len), 4), (index - first).ravel()), taps.ravel())
    return weights.astype(np.float32), first


def bicubic_crop(image: np.ndarray, y0: int, x0: int, out_h: int, out_w: int, scale: float) -> np.ndarray:
    """The (C, out_h, out_w) crop at (y0, x0) of the ×scale bicubic upsample of image (H, W, C)."""
    wy, fy = bicubic_matrix(y0, out_h, image.shape[0], scale)
    wx, fx = bicubic_matrix(x0, out_w, image.shape[1], scale)
    region = image[fy : fy + wy.shape[1], fx : fx + wx.shape[1]]
    return np.einsum("yi,ijc,xj->cyx", wy, region, wx, optimize=True).astype(np.float32)


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """×scale bicubic upsample (Keys, a = −0.75, as torch's) of a uint8 (H, W, 3) image, as uint8:
    the image the model starts from, for comparisons."""
    h, w = image.shape[:2]
    up = bicubic_crop(image.astype(np.float32) / 255, 0, 0, h * scale, w * scale, scale)
    return np.rint(np.clip(np.moveaxis(up, 0, -1), 0, 1) * 255).astype(np.uint8)


def feather_window(height: int, width: int, overlap: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """(height, width) blend weights: a ramp over `overlap` px on each side that has a neighbour."""

    def ramp(n: int, start: bool, end: bool) -> np.ndarray:
        w = np.ones(n, np.float32)
        if overlap > 0:
            r = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            if start:
                w[:overlap] = np.minimum(w[:overlap], r[: min(overlap, n)])
            if end:
                w[n - overlap :] = np.minimum(w[n - overlap :], r[::-1][: min(overlap, n)])
        return w

    return np.outer(ramp(height, top, bottom), ramp(width, left, right))


class PlanarMerger:
    """Accumulates weighted (C, h, w) tiles into an (H, W, C) image; `result()` normalises."""

    def __init__(self, height: int, width: int, channels: int, overlap: int) -> None:
        self.shape = (height, width)
        self.overlap = overlap
        self._acc = np.zeros((height, width, channels), np.float32)
        self._weight = np.zeros((height, width, 1), np.float32)

    def add(self, tile: np.ndarray, y0: int, x0: int) -> None:
        """Add a (C, h, w) tile whose top-left output pixel is (y0, x0)."""
        _, h, w = tile.shape
        height, width = self.shape
        window = feather_window(h, w, self.overlap, y0 > 0, y0 + h < height, x0 > 0, x0 + w < width)[..., None]
        self._acc[y0 : y0 + h, x0 : x0 + w] += np.moveaxis(tile, 0, -1) * window
        self._weight[y0 : y0 + h, x0 : x0 + w] += window

    def result(self) -> np.ndarray:
        """The merged (H, W, C) image."""
        return self._acc / np.maximum(self._weight, 1e-12)
