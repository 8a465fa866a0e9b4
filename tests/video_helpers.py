"""Short clips of a real face for the video-avatar tests: the astronaut, moving a little, as H.264 in MP4."""

from __future__ import annotations

import io
from collections.abc import Container

import av
import cv2
import numpy as np
from skimage import data as skdata


def moving_face(frames: int, *, size: int = 384, step_px: float = 1.5) -> list[np.ndarray]:
    """``frames`` RGB pictures of the astronaut (scaled to ``size``²) drifting right and back, as a head moves."""
    photo = cv2.resize(skdata.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    pictures = []
    for i in range(frames):
        shift = step_px * (i if i < frames // 2 else frames - i)
        warp = np.float32([[1, 0, shift], [0, 1, 0.5 * shift]])
        pictures.append(cv2.warpAffine(photo, warp, (size, size), borderMode=cv2.BORDER_REPLICATE))
    return pictures


def clip_bytes(
    pictures: list[np.ndarray],
    *,
    fps: int = 25,
    container: str = "mp4",
    codec: str = "libx264",
    blank: Container[int] = (),
) -> bytes:
    """The pictures as a video file in memory; frames whose index is in ``blank`` are flat grey (no face)."""
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as video:
        stream = video.add_stream(codec, rate=fps)
        height, width = pictures[0].shape[:2]
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        for index, picture in enumerate(pictures):
            shown = np.full_like(picture, 128) if index in blank else picture
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(shown), format="rgb24")):
                video.mux(packet)
        for packet in stream.encode(None):
            video.mux(packet)
    return out.getvalue()
