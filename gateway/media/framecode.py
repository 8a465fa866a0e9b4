"""A frame's number drawn into its top-left corner, readable after H.264: for measuring latency from outside.

With ``options.frame_code`` a session draws each frame's index (counted from the session's first frame) as a
row of black and white cells; a client that reads it back from the displayed picture (the page, with
``requestVideoFrameCallback``; a benchmark, after decoding) knows which frame it shows, and so when the audio
of that frame went in. A debugging aid: the cells cover part of the picture.

The layout survives the encoder: cells of 8×8 pixels on the 8-pixel grid H.264 transforms on, a white cell
before the first bit and a black one after the last (so a reader can tell a code is there), full black
(16) and white (235: video range) levels, read at each cell's centre against the midpoint.
"""

from __future__ import annotations

import numpy as np

CELL = 8  # pixels per cell side
BITS = 16  # frame numbers modulo 2¹⁶ (43 min at 25 frames/s)
WIDTH = (BITS + 2) * CELL  # the start and stop cells around the bits
BLACK, WHITE = 16, 235


def draw(frame: np.ndarray, number: int) -> None:
    """Draw ``number`` (mod 2¹⁶) into the top-left corner of an (H, W, 3) uint8 frame, in place."""
    height, width = frame.shape[:2]
    if height < CELL or width < WIDTH:
        raise ValueError(f"a {width}×{height} frame is too small for a frame code ({WIDTH}×{CELL})")
    bits = [(number >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    for cell, bit in enumerate([1, *bits, 0]):
        frame[:CELL, cell * CELL : (cell + 1) * CELL] = WHITE if bit else BLACK


def read(frame: np.ndarray) -> int | None:
    """The number drawn by :func:`draw` in an (H, W, 3) uint8 frame (RGB or BGR), or None if there is none."""
    height, width = frame.shape[:2]
    if height < CELL or width < WIDTH:
        return None
    centres = frame[CELL // 2, CELL // 2 : WIDTH : CELL].astype(np.int32).mean(axis=-1)
    bits = centres > (BLACK + WHITE) / 2
    if not bits[0] or bits[-1]:
        return None
    return int("".join("1" if bit else "0" for bit in bits[1:-1]), 2)
