"""The avatar record gateways share through Redis: every array comes back exactly, and foreign or damaged bytes
are refused as such (a refused record is made again from the upload)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from gateway.avatar_codec import FORMAT, RecordError, decode, encode
from gateway.avatar_store import AvatarState, AvatarStore
from gateway.avatars import DEFAULT_LIMITS
from gateway.engines import engines
from gateway.engines.wav2lip import Wav2LipAvatar
from gateway.options import SessionOptions


@pytest.fixture(scope="module")
def state(astronaut_jpeg: bytes) -> AvatarState:
    store = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30)
    avatar = asyncio.run(store.add(astronaut_jpeg))
    part = Wav2LipAvatar({})
    part.face(avatar, SessionOptions(engine="wav2lip"))  # a prepared face, as a session leaves it
    avatar.add_part("wav2lip", part)
    return avatar


def test_a_record_comes_back_exactly(state: AvatarState) -> None:
    back = decode(encode(state), engines())
    assert (back.id, back.width, back.height, back.box, back.faces_seen) == (
        state.id,
        state.width,
        state.height,
        state.box,
        state.faces_seen,
    )
    for name in ("landmarks", "crop", "aligned"):
        np.testing.assert_array_equal(getattr(back, name), getattr(state, name))
    assert set(back.framings) == set(state.framings)
    for name, framing in state.framings.items():
        np.testing.assert_array_equal(back.framings[name].image, framing.image)  # PNG is lossless
        assert back.framings[name].origin == framing.origin and back.framings[name].scale == framing.scale
    mine, theirs = state.part("wav2lip", Wav2LipAvatar), back.part("wav2lip", Wav2LipAvatar)
    assert set(theirs.faces) == set(mine.faces)
    for key, face in mine.faces.items():
        np.testing.assert_array_equal(theirs.faces[key].face_input, face.face_input)
        np.testing.assert_array_equal(theirs.faces[key].weights, face.weights)
        assert theirs.faces[key].box == face.box


def test_the_framings_are_stored_smaller_than_their_pixels(state: AvatarState) -> None:
    pixels = sum(f.image.nbytes for f in state.framings.values())
    assert len(encode(state)) < 0.8 * pixels


def test_foreign_damaged_and_other_format_records_are_refused(state: AvatarState) -> None:
    with pytest.raises(RecordError, match="not an avatar record"):
        decode(b"\x00garbage", engines())
    with np.load(io.BytesIO(encode(state))) as npz:
        arrays = {name: npz[name] for name in npz.files}
    older = io.BytesIO()
    np.savez_compressed(older, **{**arrays, "format": np.array("lipsync-avatar-record/1")})
    with pytest.raises(RecordError, match=f"format {FORMAT!r}"):
        decode(older.getvalue(), engines())
    for framing in (np.arange(100, dtype=np.uint8), np.zeros((8, 8, 3), np.float32)):  # not PNG; not even bytes
        damaged = io.BytesIO()
        np.savez_compressed(damaged, **{**arrays, "framing.portrait": framing})
        with pytest.raises(RecordError, match="damaged"):
            decode(damaged.getvalue(), engines())
