"""Video avatars: what one costs to prepare, to keep, and per frame of a session.

    python bench/video_avatar.py [--seconds 4] [--sizes 512,720]

For each size, a clip of the astronaut drifting as a head does (tests/video_helpers.py; H.264, 25 fps) is
prepared as ``POST /v1/avatars`` prepares it (``gateway.avatars.video.read_clip``: decoding, the face on every
frame, smoothing, JPEG at both framings), then a Wav2Lip session's per-frame work on it is timed
(``ClipFaces.inputs`` and ``ClipFaces.paste``: the JPEG decodes, crops and masks), beside the same work for a
photo. Prints a Markdown table; the first line names the CPU class.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from machine import cpu_class
from video_helpers import clip_bytes, moving_face

from gateway.avatars.framing import make_framings
from gateway.avatars.portrait import DEFAULT_LIMITS
from gateway.avatars.video import DEFAULT_CLIP_LIMITS, read_clip
from gateway.engines.wav2lip.clip import ClipFaces
from gateway.engines.wav2lip.face import face_box, make_face
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.media.pasteback import MaskedPasteBack


def per_frame_ms(work: Callable[[int], object], frames: int) -> float:
    """Median milliseconds of ``work(frame)`` over ``frames`` frames (after one warm-up)."""
    work(0)
    times = []
    for frame in range(frames):
        t0 = time.perf_counter()
        work(frame)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def one_input(faces: ClipFaces, frame: int) -> object:
    return faces.inputs(range(frame, frame + 1))


def faces_paste(faces: ClipFaces, face: np.ndarray, frame: int) -> object:
    return faces.paste(face, frame)


def photo_paste_frame(paste: MaskedPasteBack, face: np.ndarray, frame: int) -> object:
    return paste(face)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--sizes", default="512,720", help="clip heights (512: square; others 16:9)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # a session's paste-back runs in one worker thread
    rows = []
    face = np.zeros((96, 96, 3), np.uint8)
    for height in (int(h) for h in args.sizes.split(",")):
        # 512: the astronaut square; larger: 16:9 (the astronaut scaled to the width, cut to the height).
        width = 512 if height == 512 else round(height * 16 / 9)
        pictures = [p[:height] for p in moving_face(round(25 * args.seconds), size=width)]
        data = clip_bytes(pictures)
        t0 = time.perf_counter()
        prepared = read_clip(data, DEFAULT_CLIP_LIMITS, DEFAULT_LIMITS, 1280)
        prepare_s = time.perf_counter() - t0
        clip = prepared.clip
        frames = len(clip)
        options = Wav2LipOptions()
        faces = ClipFaces(clip, prepared.framings["portrait"], prepared.width, prepared.height, options)
        inputs_ms = per_frame_ms(partial(one_input, faces), frames)
        paste_ms = per_frame_ms(partial(faces_paste, faces, face), frames)
        # The same session on a photo: the first picture, one face input, one paste-back.
        photo = pictures[0]
        framings = make_framings(photo, prepared.box, 1280)
        box = face_box(clip.landmarks[0], prepared.width, prepared.height, options.pads)
        made = make_face(framings["portrait"], box, clip.landmarks[0], options.blend)
        photo_paste = MaskedPasteBack(framings["portrait"].image, made.box, made.weights)
        photo_ms = per_frame_ms(partial(photo_paste_frame, photo_paste, face), frames)
        w, h = prepared.framings["portrait"].size
        rows.append(
            f"| {prepared.width}×{prepared.height} ({w}×{h} out), {clip.duration:g} s | "
            f"{prepare_s / clip.duration:.2f} | {len(data) / clip.duration / 1e6:.2f} | "
            f"{clip.nbytes / clip.duration / 1e6:.2f} | {inputs_ms:.2f} | {paste_ms:.2f} | {photo_ms:.2f} | "
            f"{(inputs_ms + paste_ms - photo_ms) * 25 / 10:.1f} % |"
        )
    print(f"CPU: {cpu_class()}\n")
    print(
        "| clip | preparation, s per clip-second | upload, MB/s of clip | kept, MB per clip-second | "
        "face input, ms/frame | paste-back, ms/frame | photo paste-back, ms/frame | extra core per session |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
