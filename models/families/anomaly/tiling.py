"""Tiles of a frame at a model's input size (not squashed): positions, reflection padding of small frames, stitching."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

__all__ = ["Tiling", "tile_positions", "cut_tiles", "stitch_max"]


class Tiling(NamedTuple):
    """How one frame was cut: the padded frame's shape, the tile size and each tile's top-left corner."""

    shape: tuple[int, int]  # the frame's own (H, W)
    padded: tuple[int, int]  # (H, W) after reflection padding up to one tile where the frame is smaller
    size: int
    corners: list[tuple[int, int]]  # (y, x) of each tile in the padded frame


def tile_positions(length: int, size: int) -> list[int]:
    """Start offsets of `size` windows covering [0, length) (length >= size): a regular grid, the last
    window aligned with the end (it overlaps its neighbour instead of running past the frame)."""
    if length <= size:
        return [0]
    n = int(np.ceil(length / size))
    return [min(i * size, length - size) for i in range(n)]


def cut_tiles(frame: np.ndarray, size: int) -> tuple[list[np.ndarray], Tiling]:
    """`frame` (uint8 grey or RGB) as `size` x `size` tiles. A frame smaller than a tile in a direction is
    padded there by reflection (so every tile has the size the model was fitted on); a larger one is tiled."""
    im = np.asarray(frame)
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[:, :, 0]
    h, w = im.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        im = cv2.copyMakeBorder(im, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    H, W = im.shape[:2]
    corners = [(y, x) for y in tile_positions(H, size) for x in tile_positions(W, size)]
    tiles = [np.ascontiguousarray(im[y:y + size, x:x + size]) for y, x in corners]
    return tiles, Tiling((h, w), (H, W), size, corners)


def stitch_max(maps: list[np.ndarray], tiling: Tiling) -> np.ndarray:
    """Per-tile pixel maps (size x size) -> one frame map (H, W): the max where tiles overlap, padding cut off."""
    out = np.full(tiling.padded, -np.inf, np.float32)
    s = tiling.size
    for m, (y, x) in zip(maps, tiling.corners):
        np.maximum(out[y:y + s, x:x + s], m, out=out[y:y + s, x:x + s])
    h, w = tiling.shape
    return np.ascontiguousarray(out[:h, :w])
