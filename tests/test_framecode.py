"""The frame code (gateway/media/framecode.py): drawn, encoded by the real H.264 path, decoded, read back."""

from __future__ import annotations

import numpy as np
import pytest
from gateway_helpers import decode_video
from skimage import data

from gateway.media import framecode
from gateway.media.muxer import FragmentedMp4Writer


def test_numbers_are_read_back_and_a_picture_without_a_code_reads_none() -> None:
    picture = np.ascontiguousarray(data.astronaut())
    assert framecode.read(picture) is None
    for number, shown in ((0, 0), (1, 1), (12345, 12345), (65535, 65535), (65536 + 7, 7)):
        frame = picture.copy()
        framecode.draw(frame, number)
        assert framecode.read(frame) == shown
        assert framecode.read(np.ascontiguousarray(frame[..., ::-1])) == shown  # BGR reads the same
        np.testing.assert_array_equal(frame[framecode.CELL :], picture[framecode.CELL :])  # only the corner
    with pytest.raises(ValueError, match="too small"):
        framecode.draw(np.zeros((64, framecode.WIDTH - 1, 3), np.uint8), 1)


def test_the_code_survives_h264() -> None:
    """Over a busy picture that changes every frame, in the encoder the sessions use."""
    rng = np.random.default_rng(0)
    base = np.ascontiguousarray(data.astronaut()[:256, :256])
    frames = []
    for number in range(300, 316):
        frame = np.clip(base.astype(np.int16) + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)
        framecode.draw(frame, number)
        frames.append(frame)
    writer = FragmentedMp4Writer(256, 256)
    mp4 = writer.init_segment()
    for start in range(0, 16, 8):
        mp4 += writer.write_chunk(frames[start : start + 8], np.zeros(8 * 640, np.int16))
    mp4 += writer.finish()
    decoded, _, _, _ = decode_video(mp4)
    assert [framecode.read(frame) for frame in decoded] == list(range(300, 316))
