"""fMP4 muxer cost (encode + mux) per chunk: ``python bench/muxer.py [--chunks N] [--chunk-frames 8]``.

Frames are a smooth moving gradient with a moving disc (compressible like a talking head, not a still image);
audio is a 16 kHz tone. Reports ms per chunk and per frame for 256² and 1920×1080, for the default
(``veryfast``, baseline) and the other preset/profile pairs given with ``--configs``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.media.muxer import FragmentedMp4Writer

logger = logging.getLogger("bench.muxer")


def synthetic_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        r = (xx / width * 200 + 2 * i) % 256
        g = yy / height * 200
        disc = (xx - width / 2 - 10 * np.sin(i / 5)) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 6) ** 2
        b = np.where(disc, 230, 60 + 0 * xx)
        frames.append(np.stack([r, g, b], -1).astype(np.uint8))
    return frames


def ms_per_chunk(width: int, height: int, chunks: int, chunk_frames: int, preset: str, profile: str) -> float:
    writer = FragmentedMp4Writer(width, height, preset=preset, profile=profile)  # type: ignore[arg-type]
    frames = synthetic_frames(width, height, chunk_frames * 2)
    audio = (np.sin(np.arange(chunk_frames * writer.samples_per_frame) * 0.17) * 8000).astype(np.int16)
    writer.write_chunk(frames[:chunk_frames], audio)  # warm-up: the first IDR and encoder start-up
    start = time.perf_counter()
    size = 0
    for c in range(chunks):
        offset = (c % 2) * chunk_frames
        size += len(writer.write_chunk(frames[offset : offset + chunk_frames], audio))
    elapsed = (time.perf_counter() - start) / chunks
    kbps = size * 8 / (chunks * chunk_frames / writer.fps) / 1000
    logger.info(
        "%dx%d %s/%s: %.1f ms per %d-frame chunk (%.1f ms/frame, real time is %.0f ms), %.0f kbit/s",
        width,
        height,
        preset,
        profile,
        1e3 * elapsed,
        chunk_frames,
        1e3 * elapsed / chunk_frames,
        1e3 * chunk_frames / writer.fps,
        kbps,
    )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--chunk-frames", type=int, default=8)
    parser.add_argument("--configs", nargs="*", default=["veryfast/baseline"], help="preset/profile pairs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("cpus available: %d", len(os.sched_getaffinity(0)))
    for width, height in ((256, 256), (1920, 1080)):
        for config in args.configs:
            preset, profile = config.split("/")
            ms_per_chunk(width, height, args.chunks, args.chunk_frames, preset, profile)


if __name__ == "__main__":
    main()
