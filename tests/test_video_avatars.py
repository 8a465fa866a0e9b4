"""Video avatars (a short clip of the person instead of a photo): preparation, ping-pong playback, exact streams
with Wav2Lip on every clip frame, and the engines that take photos only."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gateway_helpers import decode_video, read_wav_int16, run_fed_in_pieces, wav_bytes
from starlette.testclient import TestClient
from video_helpers import clip_bytes, moving_face

from export.engines.wav2lip.reference import Wav2LipReference
from export.stages import StageFactory
from gateway.app import create_app
from gateway.avatars.portrait import DEFAULT_LIMITS, AvatarLimits
from gateway.avatars.store import AvatarState, AvatarStore
from gateway.avatars.video import (
    MAX_LOST_FRAMES,
    ClipLimits,
    NoFaceInClip,
    decode_frames,
    ping_pong,
    read_clip,
    smooth,
)
from gateway.engines import engines, session_options
from gateway.engines.wav2lip.clip import ClipFaces
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.errors import ImageTooLarge, PhotosOnly, UnsupportedImage
from gateway.metrics import Metrics
from gateway.session.core import StreamSession
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.settings import Settings
from gateway.triton.client import TritonClient
from gateway.triton.server import EmbeddedTriton

CLIP_FRAMES = 20


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    return moving_face(CLIP_FRAMES)


@pytest.fixture(scope="module")
def clip(pictures: list[np.ndarray]) -> bytes:
    return clip_bytes(pictures)


@pytest.fixture(scope="module")
def clip_avatar(clip: bytes) -> AvatarState:
    return asyncio.run(AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30).add(clip))


# ---------------------------------------------------------------------------------------------------------------
# Playback order and preparation


def test_ping_pong_plays_forward_then_backward_and_never_jumps() -> None:
    assert [ping_pong(n, 4) for n in range(12)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert [ping_pong(n, 1) for n in range(3)] == [0, 0, 0]
    steps = np.abs(np.diff([ping_pong(n, 7) for n in range(100)]))
    assert steps.max() == 1  # neighbours in the clip: the loop never jumps
    with pytest.raises(ValueError, match="at least one frame"):
        ping_pong(0, 0)


def test_a_clip_is_resampled_to_25_fps(pictures: list[np.ndarray]) -> None:
    assert len(list(decode_frames(clip_bytes(pictures), ClipLimits()))) == CLIP_FRAMES
    # 20 frames at 10 fps last 2 s: 50 frames at 25 fps, each source frame shown for 2 or 3 of them.
    slow = list(decode_frames(clip_bytes(pictures, fps=10), ClipLimits()))
    assert len(slow) == 50
    assert all(np.array_equal(slow[0], slow[i]) for i in (1, 2))
    assert not np.array_equal(slow[0], slow[3])
    webm = list(decode_frames(clip_bytes(pictures, container="webm", codec="libvpx"), ClipLimits()))
    assert len(webm) == CLIP_FRAMES and webm[0].shape == pictures[0].shape


def test_a_clip_stored_turned_is_decoded_as_players_show_it(pictures: list[np.ndarray], tmp_path: Path) -> None:
    # As phones record: the pixels stored a quarter turn to the left, the display matrix turning them back.
    turned = [np.ascontiguousarray(np.rot90(p[:, :300], 1)) for p in pictures[:3]]
    (tmp_path / "stored.mp4").write_bytes(clip_bytes(turned))
    tagged = tmp_path / "tagged.mp4"
    command = ["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "stored.mp4"), "-c", "copy"]
    subprocess.run([*command, "-metadata:s:v:0", "rotate=90", str(tagged)], check=True, timeout=60)
    frames = list(decode_frames(tagged.read_bytes(), ClipLimits()))
    assert frames[0].shape == (384, 300, 3)
    upright = pictures[0][:, :300]

    def error(expected: np.ndarray) -> float:
        return float(np.abs(frames[0].astype(int) - expected).mean())

    # The picture as it was filmed (H.264's loss aside), not turned over.
    assert error(upright) < 6 and error(np.rot90(upright, 2)) > 18


def test_the_prepared_clip_says_what_it_is(clip_avatar: AvatarState, pictures: list[np.ndarray]) -> None:
    answer = clip_avatar.describe()
    assert (answer["kind"], answer["frames"], answer["duration"]) == ("video", CLIP_FRAMES, CLIP_FRAMES / 25)
    assert answer["detector"] == "hog" and answer["faces_seen"] == 1
    assert clip_avatar.clip is not None
    # Every frame is kept at both framings, as JPEG close to the clip's own pixels.
    portrait = clip_avatar.clip.frames["portrait"]
    assert len(portrait) == CLIP_FRAMES and len(clip_avatar.clip.frames["face"]) == CLIP_FRAMES
    decoded = list(decode_frames(clip_bytes(pictures), ClipLimits()))
    assert np.abs(portrait.frame(7).astype(int) - decoded[7]).mean() < 3
    # The framings sessions read are frame 0's, as decoded from the clip.
    np.testing.assert_array_equal(clip_avatar.framings["portrait"].image, portrait.frame(0))
    # Bytes per clip-second: far below the decoded frames' (2 × 384² and 512² RGB a frame).
    decoded_bytes = CLIP_FRAMES * (384 * 384 + 512 * 512) * 3
    assert clip_avatar.clip.nbytes < decoded_bytes / 4


def test_the_avatar_cache_counts_a_clips_frames(clip: bytes, pictures: list[np.ndarray]) -> None:
    async def main() -> None:
        store = AvatarStore(DEFAULT_LIMITS, capacity_bytes=1)  # room for one record: the newest stays
        first = await store.add(clip)
        assert first.clip is not None and store.bytes_used == first.nbytes > first.clip.nbytes > 1_000_000
        second = await store.add(clip_bytes(pictures[:10]))
        assert store.peek(first.id) is None and store.peek(second.id) is second
        assert store.bytes_used == second.nbytes

    asyncio.run(main())


def test_landmarks_are_smoothed_over_time() -> None:
    rng = np.random.default_rng(0)
    steady = np.tile(rng.uniform(100, 200, (1, 68, 2)), (40, 1, 1))
    jittered = steady + rng.normal(0, 2.0, steady.shape)
    smoothed = smooth(jittered)
    assert np.abs(smoothed - steady).std() < 0.6 * np.abs(jittered - steady).std()
    ramp = steady + np.arange(40)[:, None, None]  # a steady motion is kept where the window is whole
    np.testing.assert_allclose(smooth(ramp)[2:-2], ramp[2:-2])


def test_a_face_lost_briefly_is_filled_in_and_longer_is_refused_with_its_time(pictures: list[np.ndarray]) -> None:
    brief = read_clip(clip_bytes(pictures, blank=range(6, 6 + MAX_LOST_FRAMES)), ClipLimits(), AvatarLimits(), 1280)
    assert brief.clip.lost_frames == MAX_LOST_FRAMES
    # The filled frames' landmarks lie between their neighbours'.
    jaw = brief.clip.landmarks[:, 8, 0]
    assert min(jaw[5], jaw[11]) - 1 <= jaw[8] <= max(jaw[5], jaw[11]) + 1
    with pytest.raises(NoFaceInClip) as refused:
        read_clip(clip_bytes(pictures, blank=range(8, 8 + MAX_LOST_FRAMES + 1)), ClipLimits(), AvatarLimits(), 1280)
    assert refused.value.code == "no_face_found"
    assert "from 0.32 s on" in refused.value.message


def test_clip_limits_are_refused_in_words(pictures: list[np.ndarray], clip: bytes) -> None:
    with pytest.raises(ImageTooLarge, match=r"longer than the limit of 0\.5 s"):
        list(decode_frames(clip, ClipLimits(max_seconds=0.5)))
    with pytest.raises(ImageTooLarge, match="bytes"):
        list(decode_frames(clip, ClipLimits(max_bytes=1000)))
    with pytest.raises(ImageTooLarge, match="384×384 pixels a frame"):
        list(decode_frames(clip, ClipLimits(max_pixels=300 * 300)))
    with pytest.raises(UnsupportedImage, match="not a video we read"):
        list(decode_frames(b"RIFF\x00\x00\x00\x00AVI LIST", ClipLimits()))
    damaged = clip[:12] + bytes(len(clip) - 12)  # an MP4's signature, then nothing readable
    with pytest.raises(UnsupportedImage):
        list(decode_frames(damaged, ClipLimits()))


# ---------------------------------------------------------------------------------------------------------------
# Sessions on a clip (the real Triton)


class CollectingSink:
    """A frame sink that keeps every pasted frame (what WebRTC would play), by number."""

    mime_type = "test"

    def __init__(self) -> None:
        self.frames: dict[int, np.ndarray] = {}

    async def put(self, first_frame: int, frames: list[np.ndarray], audio: np.ndarray) -> None:
        for number, frame in enumerate(frames, start=first_frame):
            self.frames[number] = frame

    def finish(self, audio_tail: np.ndarray) -> None:
        pass

    def cut_point(self, committed: int) -> int:
        return committed

    def drop_from(self, frame: int) -> int:
        return 0


async def _served(
    url: str, avatar: AvatarState, pcm: np.ndarray, options: SessionOptions
) -> tuple[np.ndarray, np.ndarray]:
    """One session's faces (before paste-back) and pasted frames, the audio arriving in pieces."""
    triton = TritonClient(url, timeout_s=120, metrics=Metrics())
    faces: dict[int, np.ndarray] = {}

    def observe(request: RenderRequest, chunk: np.ndarray) -> None:
        faces.update(zip(request.frames, chunk, strict=True))

    engine = engines()[options.engine]
    sink = CollectingSink()
    try:
        await engine.prepare(avatar, triton)
        session = StreamSession(avatar, options, engine, triton, Metrics(), observe=observe, sink=sink)
        await run_fed_in_pieces(session, pcm)
    finally:
        await triton.close()
    count = len(faces)
    return np.stack([faces[i] for i in range(count)]), np.stack([sink.frames[i] for i in range(count)])


@pytest.mark.triton
@pytest.mark.slow
def test_a_clip_streams_identically_whatever_the_chunking_and_as_the_offline_render(
    triton_server: EmbeddedTriton, reduced_factory: StageFactory, clip_avatar: AvatarState, spoken_wav: Path
) -> None:
    speech = read_wav_int16(spoken_wav)[: 16000 * 2 + 123]  # 50 frames: the 20-frame clip plays 2.6 times
    served = {
        k: asyncio.run(_served(triton_server.grpc_url, clip_avatar, speech, session_options("wav2lip", chunk_frames=k)))
        for k in (4, 8, 16)
    }
    faces, frames = served[8]
    assert faces.shape == (50, 96, 96, 3)
    for k in (4, 16):
        np.testing.assert_array_equal(served[k][0], faces)
        np.testing.assert_array_equal(served[k][1], frames)

    # Frame n shows clip frame ping_pong(n): outside each frame's mouth box, exactly the clip's own pixels.
    assert clip_avatar.clip is not None
    clip_faces = ClipFaces(
        clip_avatar.clip, clip_avatar.framings["portrait"], clip_avatar.width, clip_avatar.height, Wav2LipOptions()
    )
    pictures = clip_avatar.clip.frames["portrait"]
    for n in (0, 19, 20, 38, 39, 49):
        made, picture = clip_faces.face(n)
        np.testing.assert_array_equal(picture, pictures.frame(ping_pong(n, CLIP_FRAMES)))
        outside = np.ones(picture.shape[:2], bool)
        outside[made.box.y0 : made.box.y1, made.box.x0 : made.box.x1] = False
        np.testing.assert_array_equal(frames[n][outside], picture[outside])
        assert not np.array_equal(frames[n], picture)  # and the mouth is the network's
    # Each frame's face comes from its own clip frame: the network saw the moving face, not one still.
    inputs = clip_faces.inputs(range(50))
    assert not np.array_equal(inputs[0], inputs[10])
    np.testing.assert_array_equal(inputs[0], inputs[38])  # clip frame 0 again, on the way back

    # The offline PyTorch Wav2Lip on the same per-frame face inputs and the whole clip's mel.
    reference = Wav2LipReference(reduced_factory).render(inputs, speech.astype(np.float32) / 32768.0)
    difference = np.abs(faces.astype(np.int16) - reference.astype(np.int16))
    assert difference.max() <= 1, difference.max()
    assert (difference == 0).mean() > 0.98


@pytest.mark.triton
def test_an_engine_for_photos_refuses_a_video_avatar_in_words(
    triton_server: EmbeddedTriton, clip_avatar: AvatarState
) -> None:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]

    async def start() -> str:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            with pytest.raises(PhotosOnly) as refused:
                await app.state.ctx.new_session(clip_avatar, session_options("sadtalker"))
            return f"{refused.value.code}: {refused.value.message}"

    said = asyncio.run(start())
    assert said.startswith("engine_unavailable: The sadtalker engine animates photos only")
    assert "wav2lip engine" in said


# ---------------------------------------------------------------------------------------------------------------
# Through the gateway: uploads, dubbing


@pytest.fixture(scope="module")
def client(triton_server: EmbeddedTriton) -> Iterator[TestClient]:
    settings = Settings(triton_url=triton_server.grpc_url, demo=True)  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.triton
def test_a_video_uploaded_as_an_avatar_says_it_is_one(client: TestClient, clip: bytes) -> None:
    answer = client.post("/v1/avatars", files={"video": ("clip.mp4", clip, "video/mp4")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["kind"], body["frames"], body["duration"], body["detector"]) == ("video", CLIP_FRAMES, 0.8, "hog")
    raw = client.post("/v1/avatars", content=clip, headers={"content-type": "video/mp4"})
    assert raw.status_code == 200 and raw.json()["avatar_id"] == body["avatar_id"]
    photo_as_video = client.post("/v1/avatars", files={"video": ("a.jpg", b"\xff\xd8\xff\xe0" + bytes(64))})
    assert photo_as_video.status_code == 415
    assert photo_as_video.json()["error"]["message"].startswith("The video is not a video we read")
    refused = client.post(
        "/v1/lipsync?engine=sadtalker",
        files={"video": ("clip.mp4", clip), "audio": ("a.wav", wav_bytes(np.zeros(16000, np.int16)))},
    )
    assert refused.status_code == 503 and "animates photos only" in refused.json()["error"]["message"]


@pytest.mark.triton
@pytest.mark.slow
def test_a_video_is_dubbed_frame_for_frame_then_played_back_and_forth(
    client: TestClient, clip: bytes, clip_avatar: AvatarState, spoken_wav: Path
) -> None:
    speech = read_wav_int16(spoken_wav)[: 16000 + 8000]  # 1.5 s: 37 frames of a 20-frame clip
    response = client.post("/v1/lipsync", files={"video": ("clip.mp4", clip), "audio": ("s.wav", wav_bytes(speech))})
    assert response.status_code == 200, response.text
    frames, _, _, audio_seconds = decode_video(response.content)
    assert len(frames) == 37 and audio_seconds == pytest.approx(1.5, abs=0.05)
    # Outside the mouth each output frame is its clip frame (within H.264's rounding): 0…19, then 18, 17, …
    assert clip_avatar.clip is not None
    pictures = clip_avatar.clip.frames["portrait"]
    top = slice(0, max(clip_avatar.box.y0, 8))  # above the face square: never pasted into, and it moves with the head

    def distance(frame: np.ndarray, picture: int) -> float:
        return float(np.abs(frame[top].astype(int) - pictures.frame(picture)[top]).mean())

    for n in (3, 19, 25, 36):
        shown = ping_pong(n, CLIP_FRAMES)
        assert distance(frames[n], shown) < 3.0
        assert distance(frames[n], shown) < distance(frames[n], (shown + 10) % CLIP_FRAMES)

    # The same over the compatible WebSocket protocol, with a video field in place of the image.
    request = {"audio": base64.b64encode(wav_bytes(speech)).decode(), "video": base64.b64encode(clip).decode()}
    with client.websocket_connect("/ws/lipsync") as ws:
        ws.send_text(json.dumps(request))
        answer = ws.receive_json()
        assert answer["status"] == "success", answer
        dubbed = decode_video(base64.b64decode(answer["video"]))[0]
        assert len(dubbed) == 37
        # Upstream's options apply to a video as to a photo: the whole face box pasted, lower.
        ws.send_text(json.dumps({**request, "no_segmentation": True, "pads": [0, 40, 0, 0]}))
        boxed = ws.receive_json()
        assert boxed["status"] == "success", boxed
        ws.send_text(json.dumps({**request, "image": request["video"]}))
        both = ws.receive_json()
    assert both["status"] == "error" and "either `image`" in both["message"]
    boxed_frames = decode_video(base64.b64decode(boxed["video"]))[0]
    assert len(boxed_frames) == 37
    # The whole box (eyes and brows too) and 40 more pixels below the chin now carry the network's face.
    changed = [np.abs(a.astype(int) - b).mean() for a, b in zip(dubbed, boxed_frames, strict=True)]
    assert np.median(changed) > 0.5, changed
    face_framing = client.post(
        "/v1/lipsync?framing=face", files={"video": ("clip.mp4", clip), "audio": ("s.wav", wav_bytes(speech))}
    )
    assert face_framing.status_code == 200 and decode_video(face_framing.content)[0][0].shape == (512, 512, 3)
