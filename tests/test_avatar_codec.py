"""The avatar record gateways share through Redis: every array comes back exactly, and foreign, damaged, oversized
or forged bytes are refused as such, without inflating or decoding what they claim (a refused record is made
again from the upload). The Redis tests run a real ``redis-server`` on loopback (as tests/test_fleet.py does)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import struct
import threading
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis.asyncio as redis
from pydantic import ValidationError
from video_helpers import clip_bytes, moving_face

from gateway.avatars.codec import FORMAT, RecordCodec, RecordError, RecordLimits, RecordTooLarge, decode, encode
from gateway.avatars.framing import Framing
from gateway.avatars.portrait import DEFAULT_LIMITS
from gateway.avatars.shared import KEY_PREFIX, SharedAvatars
from gateway.avatars.store import AvatarState, AvatarStore
from gateway.engines import engines
from gateway.engines.sadtalker.crop import SadTalkerCrop
from gateway.engines.sadtalker.engine import SadTalkerAvatar, SadTalkerCoefficients
from gateway.engines.wav2lip.face import Wav2LipAvatar
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.metrics import Metrics
from gateway.ops.fleet import RedisServer
from gateway.settings import Settings

MiB = 2**20
KEY = "k" * 32  # the fleet's signing key in these tests
OTHER_ID = "0" * 64
VIDEO_LIMITS = RecordLimits(max_clip_bytes=8 * MiB)  # records of video avatars, as the gateway shares them


@pytest.fixture(scope="module")
def state(astronaut_jpeg: bytes) -> AvatarState:
    store = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30)
    avatar = asyncio.run(store.add(astronaut_jpeg, list(engines().values())))
    crop = avatar.part("sadtalker", SadTalkerAvatar).crop  # cut from the photo at upload
    part = Wav2LipAvatar({})
    part.face(avatar, Wav2LipOptions())  # a prepared face, as a session leaves it
    avatar.add_part("wav2lip", part)
    rng = np.random.default_rng(0)
    coefficients = (rng.standard_normal(s).astype(np.float32) for s in ((70,), (1, 15, 3), (1, 15, 3)))
    avatar.add_part("sadtalker", SadTalkerAvatar(crop, SadTalkerCoefficients(*coefficients)))
    return avatar


def members(record: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(record)) as npz:  # the test's own, trusted, bytes
        return {name: npz[name] for name in npz.files}


def rebuilt(state: AvatarState, **changes: Any) -> bytes:
    """``state``'s record with members replaced (by name, dots as in the record)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{**members(encode(state, VIDEO_LIMITS)), **changes})
    return buffer.getvalue()


@pytest.fixture
def imdecode_spy(monkeypatch: pytest.MonkeyPatch) -> Callable[[bytes], None]:
    """``forbid(png)``: cv2.imdecode fails the test if it is handed that PNG (and decodes anything else)."""
    real = cv2.imdecode
    forbidden: list[bytes] = []

    def spy(data: np.ndarray, flags: int) -> Any:
        assert np.asarray(data).tobytes() not in forbidden, "a framing was decoded before its size was checked"
        return real(data, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return forbidden.append


def png_claiming(width: int, height: int) -> np.ndarray:
    """A well-formed PNG header (CRCs right) claiming width × height RGB pixels, with a token of data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return np.frombuffer(data, np.uint8)


def png_of(width: int, height: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))
    assert ok
    return np.asarray(encoded, np.uint8).reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# The codec


def test_a_record_comes_back_exactly(state: AvatarState) -> None:
    back = decode(encode(state), engines(), state.id)
    assert (back.id, back.width, back.height, back.box, back.faces_seen) == (
        state.id,
        state.width,
        state.height,
        state.box,
        state.faces_seen,
    )
    np.testing.assert_array_equal(back.landmarks, state.landmarks)
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
    for name in ("source", "kp_canonical", "kp_source"):
        want = getattr(state.part("sadtalker", SadTalkerAvatar).prepared(), name)
        np.testing.assert_array_equal(getattr(back.part("sadtalker", SadTalkerAvatar).prepared(), name), want)
    for name in ("crop", "aligned", "align_params"):
        want = getattr(state.part("sadtalker", SadTalkerAvatar).crop, name)
        np.testing.assert_array_equal(getattr(back.part("sadtalker", SadTalkerAvatar).crop, name), want)


def test_the_detector_comes_back_and_a_record_from_before_it_reads_as_hog(state: AvatarState) -> None:
    assert state.detector == "hog"  # the astronaut: so a record keeping "cnn" is made by hand
    cnn = dataclasses.replace(state, detector="cnn")
    assert decode(encode(cnn), engines(), cnn.id).detector == "cnn"
    meta = json.loads(str(members(encode(cnn))["meta"]))
    del meta["detector"]  # as gateways wrote records before the detector was kept (same format)
    assert decode(rebuilt(cnn, meta=np.array(json.dumps(meta))), engines(), cnn.id).detector == "hog"
    with pytest.raises(RecordError, match=r"damaged avatar record .*a face detector 'retina'"):
        decode(rebuilt(cnn, meta=np.array(json.dumps({**meta, "detector": "retina"}))), engines(), cnn.id)


def test_the_framings_are_stored_smaller_than_their_pixels(state: AvatarState) -> None:
    pixels = sum(f.image.nbytes for f in state.framings.values())
    assert len(encode(state)) < 0.8 * pixels


def test_foreign_damaged_and_other_format_records_are_refused(state: AvatarState) -> None:
    with pytest.raises(RecordError, match="not an avatar record"):
        decode(b"\x00garbage", engines(), state.id)
    with pytest.raises(RecordError, match=f"format {FORMAT!r}"):
        decode(rebuilt(state, format=np.array("lipsync-avatar-record/1")), engines(), state.id)
    for framing in (np.arange(100, dtype=np.uint8), np.zeros((8, 8, 3), np.float32)):  # not PNG; not even bytes
        with pytest.raises(RecordError, match="damaged"):
            decode(rebuilt(state, **{"framing.portrait": framing}), engines(), state.id)
    pickled = io.BytesIO()  # an object array is a pickle: never loaded
    np.savez_compressed(pickled, **{**members(encode(state)), "crop": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(RecordError, match="dtype object"):
        decode(pickled.getvalue(), engines(), state.id)


def deflate_bomb(inflated: int, claimed: int | None) -> bytes:
    """A zip whose ``crop.npy`` inflates to ``inflated`` bytes; its headers say ``claimed`` (None: the truth)."""
    buffer = io.BytesIO()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (inflated,)})
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("crop.npy", "w") as member:
        member.write(header.getvalue())
        zeros = bytes(MiB)
        for _ in range(inflated // MiB):
            member.write(zeros)
    data = bytearray(buffer.getvalue())
    if claimed is not None:  # the local header's and the central directory's uncompressed size
        local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
        data[local + 22 : local + 26] = struct.pack("<I", claimed)
        data[central + 24 : central + 28] = struct.pack("<I", claimed)
    return bytes(data)


@pytest.mark.parametrize(("claimed", "refusal"), [(None, "inflating to 256"), (1000, "not an avatar record")])
def test_a_deflate_bomb_is_refused_without_being_inflated(claimed: int | None, refusal: str) -> None:
    bomb = deflate_bomb(256 * MiB, claimed)
    assert len(bomb) < MiB  # it fits well within any cap on stored records
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match=refusal):
            decode(bomb, engines(), OTHER_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # the bomb inflates to 256 MiB; the cap at the default 1280 px is 34.8 MiB


def test_an_array_claiming_more_than_its_bytes_is_refused_unallocated() -> None:
    """numpy would allocate what an .npy header claims before finding the data short."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (32 * MiB,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("landmarks.npy", header.getvalue() + bytes(1088))
    tracemalloc.start()
    try:
        with pytest.raises(RecordError, match=r"holds other than its \(33554432,\) float64"):
            decode(buffer.getvalue(), engines(), OTHER_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB  # the header claims 256 MiB


def test_a_record_over_the_stored_cap_is_refused_unread(state: AvatarState) -> None:
    limits = RecordLimits(max_output_side=64)
    with pytest.raises(RecordTooLarge, match=r"over 8\.0 MiB"):
        decode(encode(state) + bytes(limits.max_record_bytes), engines(), state.id, limits)


@pytest.mark.parametrize(
    ("framing", "png", "refusal"),
    [
        ("portrait", png_claiming(30000, 30000), "portrait framing of 30000×30000, over this server's 1280"),
        ("portrait", png_of(1282, 720), "portrait framing of 1282×720"),
        ("face", png_of(1024, 1024), "face framing of 1024×1024, not 512×512"),
    ],
    ids=["claiming-900-megapixels", "over-max-output-side", "face-not-512"],
)
def test_a_framing_larger_than_this_server_makes_is_refused_before_decoding(
    state: AvatarState, imdecode_spy: Callable[[bytes], None], framing: str, png: np.ndarray, refusal: str
) -> None:
    imdecode_spy(png.tobytes())
    with pytest.raises(RecordError, match=refusal):
        decode(rebuilt(state, **{f"framing.{framing}": png}), engines(), state.id, RecordLimits(1280))


def test_a_grey_framing_is_refused(state: AvatarState) -> None:
    ok, grey = cv2.imencode(".png", np.zeros((720, 1280), np.uint8))
    assert ok
    with pytest.raises(RecordError, match="colour type 0, not 8-bit RGB"):
        decode(rebuilt(state, **{"framing.portrait": grey.reshape(-1)}), engines(), state.id)


def _crop(state: AvatarState) -> SadTalkerCrop:
    return state.part("sadtalker", SadTalkerAvatar).crop


def _face_box(state: AvatarState) -> np.ndarray:
    return members(encode(state))["part.wav2lip.0.box"]


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (lambda s: {"part.sadtalker.crop": _crop(s).crop.astype(np.float32)}, "crop of float32"),
        (lambda s: {"part.sadtalker.crop": _crop(s).crop[:255]}, r"crop of uint8 \(255, 256, 3\)"),
        (lambda s: {"part.sadtalker.aligned": _crop(s).aligned.astype(np.int16)}, "aligned of int16"),
        (lambda s: {"landmarks": s.landmarks[:67]}, r"landmarks of float64 \(67, 2\)"),
        (lambda s: {"landmarks": np.full((68, 2), np.nan)}, "not finite"),
        (lambda s: {"part.wav2lip.0.face_input": np.zeros((1, 6, 96, 95), np.float32)}, "face input"),
        (lambda s: {"part.wav2lip.0.weights": np.zeros((3, 3), np.float32)}, "Wav2Lip weights"),
        (lambda s: {"part.wav2lip.0.box": _face_box(s) + 10_000}, "outside its"),
        (lambda s: {"part.sadtalker.source": np.zeros(69, np.float32)}, r"source of float32 \(69,\)"),
        (lambda s: {"part.sadtalker.kp_source": np.zeros((1, 15, 3))}, "kp_source of float64"),
    ],
    ids=[
        "crop-dtype",
        "crop-shape",
        "aligned-dtype",
        "landmarks-shape",
        "landmarks-nan",
        "wav2lip-input-shape",
        "wav2lip-weights-box",
        "wav2lip-box-outside",
        "sadtalker-source-shape",
        "sadtalker-kp-dtype",
    ],
)
def test_arrays_of_another_shape_or_dtype_are_refused(
    state: AvatarState, change: Callable[[AvatarState], dict[str, np.ndarray]], refusal: str
) -> None:
    with pytest.raises(RecordError, match=f"damaged avatar record .*{refusal}"):
        decode(rebuilt(state, **change(state)), engines(), state.id)


def test_a_description_out_of_bounds_is_refused(state: AvatarState) -> None:
    meta = str(members(encode(state))["meta"])
    for find, replace, refusal in (
        ('"box": [', '"box": [-5, ', "box"),  # five numbers
        (f'"width": {state.width}', '"width": 100000', f"over {DEFAULT_LIMITS.max_pixels} pixels"),
        ('"face": [', '"closeup": [', "framings"),
    ):
        assert find in meta
        with pytest.raises(RecordError, match=refusal):
            decode(rebuilt(state, meta=np.array(meta.replace(find, replace))), engines(), state.id)


def test_a_record_stored_under_another_avatar_id_is_refused_before_its_pixels(
    state: AvatarState, imdecode_spy: Callable[[bytes], None]
) -> None:
    for framing in members(encode(state)).values():
        imdecode_spy(framing.tobytes())
    with pytest.raises(RecordError, match=f"another avatar \\('{state.id[:12]}'\\)"):
        decode(encode(state), engines(), OTHER_ID)


def test_a_record_over_the_caps_is_not_written(state: AvatarState) -> None:
    large = dataclasses.replace(
        state,
        framings={
            **state.framings,
            "portrait": Framing(np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), np.uint8), (0, 0), (1, 1)),
        },
    )
    # ≈ 12.6 MiB of PNG noise: under the inflated cap at 64 px (16 MiB + 12·64²), over the stored one (8 MiB + 4·64²)
    with pytest.raises(RecordTooLarge, match=r"over 8\.0"):
        encode(large, RecordLimits(max_output_side=64))


def test_the_largest_legitimate_record_fits_the_caps(state: AvatarState) -> None:
    """A 1280² portrait of incompressible pixels (a photo deflates to about half) is shared and read back."""
    noise = np.random.default_rng(1).integers(0, 256, (1280, 1280, 3), np.uint8)
    large = dataclasses.replace(state, framings={**state.framings, "portrait": Framing(noise, (0, 0), (1, 1))})
    back = decode(encode(large, RecordLimits(1280)), engines(), state.id, RecordLimits(1280))
    np.testing.assert_array_equal(back.framings["portrait"].image, noise)


# ---------------------------------------------------------------------------------------------------------------
# Through Redis


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


class ThreadRecordingCodec(RecordCodec):
    """The real codec, noting the thread each step ran on."""

    threads: dict[str, list[threading.Thread]]

    def __init__(self) -> None:
        super().__init__(engines())
        object.__setattr__(self, "threads", {"snapshot": [], "pack": [], "decode": []})

    def snapshot(self, state: AvatarState) -> dict[str, Any]:
        self.threads["snapshot"].append(threading.current_thread())
        return super().snapshot(state)

    def pack(self, arrays: dict[str, Any]) -> bytes:
        self.threads["pack"].append(threading.current_thread())
        return super().pack(arrays)

    def decode(self, data: bytes, avatar_id: str) -> AvatarState:
        self.threads["decode"].append(threading.current_thread())
        return super().decode(data, avatar_id)


def shared(url: str, key: str = KEY, codec: RecordCodec | None = None, metrics: Metrics | None = None) -> SharedAvatars:
    return SharedAvatars(
        url,
        ttl_s=60,
        codec=codec or RecordCodec(engines()),
        signing_key=key,
        refused=(metrics or Metrics()).shared_avatars_refused,
    )


def refusals(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("lipsync_shared_avatar_records_refused_total", {"reason": reason})
    return value or 0.0


def test_a_record_is_shared_signed_and_coded_off_the_event_loop(redis_url: str, state: AvatarState) -> None:
    codec = ThreadRecordingCodec()

    async def main() -> tuple[AvatarState | None, threading.Thread]:
        owner, peer = shared(redis_url, codec=codec), shared(redis_url, codec=codec)
        try:
            await owner.save(state)
            return await peer.load(state.id), threading.current_thread()
        finally:
            await owner.close()
            await peer.close()

    back, loop_thread = asyncio.run(main())
    assert back is not None and back.id == state.id
    np.testing.assert_array_equal(back.framings["portrait"].image, state.framings["portrait"].image)
    assert codec.threads["snapshot"] == [loop_thread]  # where the avatar's parts change: no race with them
    assert len(codec.threads["pack"]) == len(codec.threads["decode"]) == 1
    assert loop_thread not in codec.threads["pack"] + codec.threads["decode"]


def test_a_record_written_without_the_key_is_refused_and_its_owner_keeps_serving_its_own(
    redis_url: str, astronaut_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        metrics = Metrics()
        owner_shared, peer, forger = shared(redis_url), shared(redis_url, metrics=metrics), shared(redis_url, "f" * 32)
        owner = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30, shared=owner_shared)
        raw = redis.Redis.from_url(redis_url)
        try:
            mine = await owner.add(astronaut_jpeg)
            assert await peer.load(mine.id) is not None  # the owner's record, signed with the fleet's key
            # Someone who can write Redis but lacks the key swaps the avatar's pixels, under its id.
            swapped = dataclasses.replace(mine, landmarks=np.zeros_like(mine.landmarks), parts={})
            await forger.save(swapped)
            with caplog.at_level(logging.WARNING, logger="gateway.avatars.shared"):
                assert await peer.load(mine.id) is None
            assert "signature does not match" in caplog.text
            assert refusals(metrics, "signature") == 1
            assert await owner.get(mine.id) is mine  # the owner still serves its own copy
            # The genuine record moved under another id, and an unsigned one: refused alike, never decoded.
            await owner_shared.save(mine)
            genuine = await raw.get(KEY_PREFIX + mine.id)
            assert isinstance(genuine, bytes)
            await raw.set(KEY_PREFIX + OTHER_ID, genuine)
            assert await peer.load(OTHER_ID) is None
            await raw.set(KEY_PREFIX + OTHER_ID, encode(mine))
            assert await peer.load(OTHER_ID) is None
            assert refusals(metrics, "signature") == 3
            assert await peer.load(mine.id) is not None  # and the genuine one, where it belongs, is read
        finally:
            for store in (owner_shared, peer, forger):
                await store.close()
            await raw.aclose()

    asyncio.run(main())


def test_an_oversized_value_is_not_even_fetched(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> float:
        metrics = Metrics()
        peer = shared(redis_url, codec=RecordCodec(engines(), RecordLimits(max_output_side=64)), metrics=metrics)
        raw = redis.Redis.from_url(redis_url)
        try:
            await raw.set(KEY_PREFIX + OTHER_ID, bytes(128 * MiB))
            tracemalloc.start()
            try:
                with caplog.at_level(logging.WARNING, logger="gateway.avatars.shared"):
                    assert await peer.load(OTHER_ID) is None
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            await raw.delete(KEY_PREFIX + OTHER_ID)
            assert refusals(metrics, "too_large") == 1
            return peak
        finally:
            await peer.close()
            await raw.aclose()

    peak = asyncio.run(main())
    assert "a record over 8.0 MiB" in caplog.text
    assert peak < 40 * MiB  # the value is 128 MiB; the cap at 64 px is 8 MiB


# ---------------------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("key", "refusal"),
    [
        (None, "LIPSYNC_REDIS_URL is set but LIPSYNC_AVATAR_SIGNING_KEY is not: set it to the same secret"),
        ("short-secret", "LIPSYNC_AVATAR_SIGNING_KEY has 12 characters: use a secret of at least 16"),
    ],
)
def test_redis_without_a_signing_key_refuses_to_start_saying_how_to_set_one(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    key: str | None,
    refusal: str,
) -> None:
    from gateway.__main__ import main

    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("LIPSYNC_TRITON_URL", "127.0.0.1:1")
    monkeypatch.setenv("LIPSYNC_REDIS_URL", "redis://127.0.0.1:1/0")
    if key is None:
        monkeypatch.delenv("LIPSYNC_AVATAR_SIGNING_KEY", raising=False)
    else:
        monkeypatch.setenv("LIPSYNC_AVATAR_SIGNING_KEY", key)
    with pytest.raises(ValidationError, match=refusal):  # first: a gateway that did start would serve here
        Settings()
    with caplog.at_level(logging.ERROR):
        assert main(["serve"]) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert refusal in line and "\n" not in line
    assert key is None or key not in line  # a refused key is not written to the log either
    monkeypatch.setenv("LIPSYNC_AVATAR_SIGNING_KEY", "a-long-enough-secret")
    assert Settings().avatar_signing_key == "a-long-enough-secret"
    monkeypatch.delenv("LIPSYNC_REDIS_URL")
    monkeypatch.delenv("LIPSYNC_AVATAR_SIGNING_KEY")
    assert Settings().avatar_signing_key is None  # without Redis, nothing to sign


# ---------------------------------------------------------------------------------------------------------------
# Video avatars


@pytest.fixture(scope="module")
def clip_state() -> AvatarState:
    return asyncio.run(AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30).add(clip_bytes(moving_face(12))))


def test_a_video_avatar_comes_back_exactly(clip_state: AvatarState) -> None:
    back = decode(encode(clip_state, VIDEO_LIMITS), engines(), clip_state.id, VIDEO_LIMITS)
    assert back.clip is not None and clip_state.clip is not None
    assert back.describe() == clip_state.describe() and back.describe()["kind"] == "video"
    np.testing.assert_array_equal(back.clip.landmarks, clip_state.clip.landmarks)
    for name, frames in clip_state.clip.frames.items():
        np.testing.assert_array_equal(back.clip.frames[name].data, frames.data)
        np.testing.assert_array_equal(back.clip.frames[name].offsets, frames.offsets)
        np.testing.assert_array_equal(back.clip.frames[name].frame(11), frames.frame(11))
    assert back.clip.lost_frames == clip_state.clip.lost_frames


def test_a_video_record_is_checked_frame_by_frame_before_any_is_decoded(
    clip_state: AvatarState, imdecode_spy: Callable[[bytes], None]
) -> None:
    assert clip_state.clip is not None
    frames = clip_state.clip.frames["portrait"]
    data = frames.data.copy()
    # Frame 3's JPEG header claims a picture of 60000 pixels a side (a decoder would allocate it).
    start = int(frames.offsets[3])
    header = data[start : start + 1024].tobytes()
    sof = header.index(b"\xff\xc0")
    data[start + sof + 5 : start + sof + 9] = np.frombuffer(struct.pack(">HH", 60000, 60000), np.uint8)
    imdecode_spy(data[start : int(frames.offsets[4])].tobytes())
    with pytest.raises(RecordError, match="portrait frame 3 is not a 384×384 JPEG"):
        decode(rebuilt(clip_state, **{"clip.portrait.jpeg": data}), engines(), clip_state.id, VIDEO_LIMITS)
    shifted = frames.offsets.copy()
    shifted[5] = shifted[4]
    with pytest.raises(RecordError, match="offsets that do not divide"):
        decode(rebuilt(clip_state, **{"clip.portrait.offsets": shifted}), engines(), clip_state.id, VIDEO_LIMITS)
    with pytest.raises(RecordError, match="a clip of 12 frames, not 1 to 10"):
        decode(
            encode(clip_state, VIDEO_LIMITS),
            engines(),
            clip_state.id,
            RecordLimits(max_clip_bytes=8 * MiB, max_clip_frames=10),
        )
    with pytest.raises(RecordTooLarge, match="its video takes"):
        encode(clip_state, RecordLimits(max_clip_bytes=100_000))
    with pytest.raises(RecordTooLarge, match="its video takes"):  # no budget: video avatars are not shared
        encode(clip_state)


def test_a_video_avatar_is_shared_through_redis(redis_url: str) -> None:
    async def main() -> None:
        codec = RecordCodec(engines(), VIDEO_LIMITS)
        owner_shared, peer = shared(redis_url, codec=codec), shared(redis_url, codec=codec)
        owner = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30, shared=owner_shared)
        try:
            mine = await owner.add(clip_bytes(moving_face(12, step_px=2.0)))
            theirs = await peer.load(mine.id)
            assert theirs is not None and theirs.clip is not None and mine.clip is not None
            assert len(theirs.clip) == 12
            np.testing.assert_array_equal(theirs.clip.frames["face"].frame(6), mine.clip.frames["face"].frame(6))
        finally:
            for store in (owner_shared, peer):
                await store.close()

    asyncio.run(main())
