"""Paste-back cost per frame into a 1080p portrait: ``python bench/pasteback.py [--frames N]``.

The portrait is skimage's astronaut enlarged to 1080 rows inside a 1920×1080 frame (a face box of ~380 px);
faces are the avatar's own crop at 256² and at 512² (the enhancer's output size).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.engines.sadtalker.crop import prepare_avatar
from gateway.media.pasteback import PasteBack, paste_back, resize_faces


def per_frame_ms(step: Callable[[], object], frames: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(frames):
        step()
    return 1e3 * (time.perf_counter() - start) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()

    frame = np.full((1080, 1920, 3), 90, np.uint8)
    frame[:, 420:1500] = cv2.resize(skimage.data.astronaut(), (1080, 1080), interpolation=cv2.INTER_CUBIC)
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "PNG")
    avatar = prepare_avatar(buffer.getvalue())
    paster = PasteBack.for_avatar(avatar)
    out = paster.new_frame()
    box = avatar.box
    for face in (np.asarray(avatar.crop), resize_faces(np.asarray(avatar.crop), 512)):
        size = face.shape[0]
        reused = per_frame_ms(partial(paster, face, out=out), args.frames)
        fresh = per_frame_ms(partial(paste_back, avatar.image, face, box), args.frames // 3)
        print(
            f"paste-back 1920x1080, box {box.width}x{box.height}, face {size}^2, cv2 threads {cv2.getNumThreads()}: "
            f"{reused:.2f} ms/frame into a reused frame buffer, {fresh:.2f} ms/frame with a new frame and mask"
        )


if __name__ == "__main__":
    main()
