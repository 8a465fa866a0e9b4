"""A short video of the person as an avatar: decoded once at upload into what sessions read.

Wav2Lip re-renders only the mouth, so the rest of the picture can be the person's own clip (breathing, blinks,
small head motion) instead of a frozen photo. At upload the clip is:

1. opened with the one FFmpeg demuxer its leading bytes name (MP4/MOV or WebM/Matroska; nothing FFmpeg would
   probe beyond them), within limits of bytes, pixels and seconds checked as it decodes;
2. resampled to 25 fps (each output frame shows the source frame on screen at its time), turned upright;
3. searched for the face on every frame: near the last frame's face first (cheap), the whole frame when that
   fails (``detect_face``: HOG, then the CNN detector); frames where the face is lost are filled from their
   neighbours, and a clip that loses it for longer than :data:`MAX_LOST_FRAMES` is refused with the time;
4. smoothed: each frame's 68 landmarks are averaged with its neighbours' (:data:`SMOOTH_FRAMES`), so the mouth
   box does not jitter (upstream Wav2Lip smooths its boxes over 5 frames ahead; we centre the window);
5. kept as JPEG per output framing (:class:`ClipFrames`): a 20 s clip at 720p would be ≈ 1.4 GB decoded; as
   JPEG q92 it is a few MB per second, decoded per frame as sessions need it (docs/measurements.md).

A session plays frame ``ping_pong(n)`` of the clip for its frame ``n``: forward, then backward, so the loop
never jumps.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2
import numpy as np

from gateway.avatars.framing import Framing, face_framing, portrait_framing
from gateway.avatars.portrait import (
    AvatarLimits,
    Box,
    Detector,
    FaceDetection,
    avatar_key,
    cnn_face_rects,
    face_rects,
    face_square,
    landmarks_of,
)
from gateway.errors import FaceTooSmall, ImageTooLarge, NoFaceFound, UnsupportedImage
from lipsync.audio import FPS

log = logging.getLogger(__name__)

# What the docs promise, in words.
ACCEPTED_VIDEO = "MP4, MOV, WebM or Matroska"
# The face may be lost this many frames in a row (0.2 s: a hand passing, a turn of the head) and is filled in
# from its neighbours; longer, and the clip is refused.
MAX_LOST_FRAMES = 5
# Landmarks are averaged over this many frames, centred (odd).
SMOOTH_FRAMES = 5
# Frames are kept as JPEG of this quality: at 512² q92 differs from the pixels by ≈ 2 levels on average
# (less than the clip's own H.264 did) and decodes in ≈ 1 ms.
JPEG_QUALITY = 92
# The CNN detector (where HOG sees no face) costs ≈ 1.6 s a frame here: a clip may need it on this many frames.
CNN_FRAMES = 12
# Tracking: the last face's box grown by this much on each side is searched first, scaled so that the face is
# about TRACK_FACE_PX wide (dlib's HOG finds faces from ≈ 80 px at no upsampling).
TRACK_MARGIN = 0.8
TRACK_FACE_PX = 110
# A container may claim any frame rate: source frames beyond this many per output second are not decoded.
MAX_SOURCE_FPS = 240
# Demuxer options: the MOV/MP4 demuxer must not follow data references to other files.
_DEMUXER_OPTIONS = {"mov": {"enable_drefs": "0"}}


@dataclass(frozen=True)
class ClipLimits:
    """What a video avatar (or a video to dub) may be; the gateway's settings fill these."""

    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 20.0
    max_pixels: int = 3840 * 2160


DEFAULT_CLIP_LIMITS = ClipLimits()


def sniff_video(data: bytes) -> str | None:
    """The FFmpeg demuxer for a video container of ours, by its leading bytes, or None."""
    head = data[:12]
    if head[4:8] == b"ftyp":  # ISO base media: MP4, MOV
        return "mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM, Matroska
        return "matroska"
    return None


def require_video(data: bytes) -> bytes:
    """``data`` if it begins as a video container of ours; UnsupportedImage in words otherwise (a field that
    promises a video)."""
    if sniff_video(data) is None:
        raise UnsupportedImage(f"The video is not a video we read. Send {ACCEPTED_VIDEO}.")
    return data


def ping_pong(frame: int, count: int) -> int:
    """The clip frame shown at session frame ``frame``: 0, 1, …, count−1, count−2, …, 1, 0, 1, …"""
    if count < 1:
        raise ValueError(f"a clip has at least one frame, got {count}")
    if count == 1:
        return 0
    period = 2 * count - 2
    k = frame % period
    return k if k < count else period - k


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode_frames(data: bytes, limits: ClipLimits) -> Iterator[np.ndarray]:
    """The clip's frames at 25 fps, (H, W, 3) uint8 RGB, upright; UnsupportedImage / ImageTooLarge in words."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"The video is too large: {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes.")
    demuxer = sniff_video(data)
    if demuxer is None:
        raise UnsupportedImage(f"The file is not a video we read. Send {ACCEPTED_VIDEO}.")
    try:
        container = av.open(io.BytesIO(data), mode="r", format=demuxer, options=_DEMUXER_OPTIONS.get(demuxer, {}))
    except (av.error.FFmpegError, OSError) as err:
        raise UnsupportedImage(f"The video cannot be read: it is damaged or not {ACCEPTED_VIDEO}.") from err
    with container:
        if not container.streams.video:
            raise UnsupportedImage("The file has no video stream.")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_pixels:
            raise ImageTooLarge(
                f"The video is too large: {width}×{height} pixels a frame; the limit is {limits.max_pixels:,}."
            )
        # The header may understate a later frame: the decoder itself refuses any frame past the limit.
        stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
        yield from _resampled(container, stream, limits)


def _resampled(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, limits: ClipLimits
) -> Iterator[np.ndarray]:
    """Each output frame i shows the last source frame that starts at or before i/25 s."""
    max_frames = math.floor(limits.max_seconds * FPS + 1e-9)
    max_source = math.ceil(limits.max_seconds * MAX_SOURCE_FPS) + 1
    emitted = decoded = 0
    previous: np.ndarray | None = None
    start: float | None = None
    last_time = 0.0
    try:
        for frame in container.decode(stream):
            decoded += 1
            if decoded > max_source:
                raise UnsupportedImage(f"The video has more than {MAX_SOURCE_FPS} frames a second.")
            if frame.time is None:
                continue
            start = frame.time if start is None else start
            at = frame.time - start
            if previous is not None:
                while emitted / FPS < at - 1e-6:  # output frames before this one starts show the previous
                    if emitted >= max_frames:
                        raise ImageTooLarge(f"The video is longer than the limit of {limits.max_seconds:g} s.")
                    yield previous
                    emitted += 1
            previous = _upright(frame)
            last_time = at
    except av.error.FFmpegError as err:
        raise UnsupportedImage("The video is damaged part-way through.") from err
    if previous is None:
        raise UnsupportedImage("The video has no frames we can decode.")
    # The last source frame stays on screen for its own duration (one frame at the stream's rate).
    rate = float(stream.average_rate) if stream.average_rate else float(FPS)
    end = last_time + 1.0 / max(rate, 1e-3)
    while emitted == 0 or emitted / FPS < end - 1e-6:
        if emitted >= max_frames:
            raise ImageTooLarge(f"The video is longer than the limit of {limits.max_seconds:g} s.")
        yield previous
        emitted += 1


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame as players show it: a phone's clip is stored turned, with the turn in its display matrix."""
    image = frame.to_ndarray(format="rgb24")
    turns = round(frame.rotation / 90) % 4 if frame.rotation else 0  # quarter turns clockwise to display
    return np.ascontiguousarray(np.rot90(image, k=-turns)) if turns else image


# ---------------------------------------------------------------------------------------------------------------
# Faces on every frame


def _near(previous: Box, width: int, height: int) -> Box:
    """Where to look for the face first: the last frame's box grown by :data:`TRACK_MARGIN` on each side."""
    grow_x, grow_y = TRACK_MARGIN * previous.width, TRACK_MARGIN * previous.height
    return Box(
        max(0, math.floor(previous.x0 - grow_x)),
        max(0, math.floor(previous.y0 - grow_y)),
        min(width, math.ceil(previous.x1 + grow_x)),
        min(height, math.ceil(previous.y1 + grow_y)),
    )


def _cut(image: np.ndarray, region: Box) -> np.ndarray:
    return image[region.y0 : region.y1, region.x0 : region.x1]


@dataclass
class _Tracker:
    """Finds the face frame after frame: near the last one with HOG (milliseconds), in the whole frame with HOG,
    then near the last one (or anywhere, before the first) with the CNN detector (a second or more), which a clip
    may need on at most ``cnn_frames`` frames."""

    cnn_frames: int
    previous: Box | None = None
    cnn_runs: int = 0

    def find(self, image: np.ndarray, at_s: float) -> FaceDetection | None:
        height, width = image.shape[:2]
        whole = Box(0, 0, width, height)
        near = whole if self.previous is None else _near(self.previous, width, height)
        detector: Detector = "hog"
        region, found = near, []
        if self.previous is not None:
            scale = min(1.0, TRACK_FACE_PX / max(self.previous.width, 1))
            found = face_rects(_cut(image, near), scale=scale, upsample=0)
        if not found:
            region, found = whole, face_rects(image)
        if not found:
            if self.cnn_runs >= self.cnn_frames:
                raise NoFaceInClip(
                    f"The face in this video is hard to find: the fast detector misses it on more than "
                    f"{self.cnn_frames} frames (again at {at_s:.2f} s). Use a clip with the face evenly lit and "
                    "looking at the camera."
                )
            self.cnn_runs += 1
            detector, region, found = "cnn", near, cnn_face_rects(_cut(image, near))
        if not found:
            return None
        best = max(found, key=lambda r: r.width * r.height)
        rect = Box(best.x0 + region.x0, best.y0 + region.y0, best.x1 + region.x0, best.y1 + region.y0)
        self.previous = rect
        return FaceDetection(rect, landmarks_of(image, rect), faces_seen=len(found), detector=detector)


def _fill_lost(found: list[np.ndarray | None]) -> np.ndarray:
    """(N, 68, 2) landmarks with short gaps filled linearly from their neighbours (held at the clip's ends);
    NoFaceFound naming the time when a gap is longer than :data:`MAX_LOST_FRAMES`."""
    known = [i for i, points in enumerate(found) if points is not None]
    if not known:
        raise NoFaceFound()
    gaps = np.diff([-1, *known, len(found)]) - 1
    starts = [-1, *known]
    for gap, before in zip(gaps, starts, strict=True):
        if gap > MAX_LOST_FRAMES:
            raise NoFaceInClip.lost((before + 1) / FPS)
    out = np.empty((len(found), 68, 2), np.float64)
    index = np.arange(len(found))
    flat = np.stack([found[i] for i in known]).reshape(len(known), -1)  # type: ignore[misc]
    for column in range(flat.shape[1]):
        out.reshape(len(found), -1)[:, column] = np.interp(index, known, flat[:, column])
    return out


def smooth(landmarks: np.ndarray, window: int = SMOOTH_FRAMES) -> np.ndarray:
    """Each frame's landmarks averaged with its neighbours' (a centred window, shorter at the clip's ends)."""
    count = len(landmarks)
    half = window // 2
    sums = np.concatenate([np.zeros((1, *landmarks.shape[1:])), np.cumsum(landmarks, axis=0)])
    lo = np.clip(np.arange(count) - half, 0, count)
    hi = np.clip(np.arange(count) + half + 1, 0, count)
    return (sums[hi] - sums[lo]) / (hi - lo)[:, None, None]


class NoFaceInClip(NoFaceFound):
    """A video whose face is lost for longer than a blink, or too hard to find; ``no_face_found`` in words."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
        self.args = (message,)

    @classmethod
    def lost(cls, at_s: float) -> NoFaceInClip:
        return cls(
            f"No face was found in the video from {at_s:.2f} s on, for more than {MAX_LOST_FRAMES / FPS:.2f} s. "
            "Use a clip where one face stays in view, looking roughly at the camera."
        )


# ---------------------------------------------------------------------------------------------------------------
# What a video avatar keeps


@dataclass(frozen=True, eq=False)
class ClipFrames:
    """One framing's frames, JPEG-compressed in one buffer; :meth:`frame` decodes one (RGB)."""

    data: np.ndarray  # (bytes,) uint8: the JPEGs one after another
    offsets: np.ndarray  # (count + 1,) int64: where each starts, and the end

    def __post_init__(self) -> None:
        for array in (self.data, self.offsets):
            array.setflags(write=False)

    @classmethod
    def of_jpegs(cls, jpegs: list[bytes]) -> ClipFrames:
        offsets = np.cumsum([0, *(len(j) for j in jpegs)]).astype(np.int64)
        data = np.frombuffer(b"".join(jpegs), np.uint8).copy() if jpegs else np.zeros(0, np.uint8)
        return cls(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as (H, W, 3) uint8 RGB (a fresh, writable array)."""
        jpeg = self.data[self.offsets[index] : self.offsets[index + 1]]
        bgr = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"clip frame {index} is not a JPEG")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # a strided numpy copy costs 100× more at 720p

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)


def jpeg(frame: np.ndarray) -> bytes:
    """An RGB frame as the JPEG a clip keeps."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"cannot encode a {frame.shape} frame as JPEG")
    return encoded.tobytes()


@dataclass(frozen=True, eq=False)
class AvatarClip:
    """A video avatar's frames: per framing, every frame (JPEG), and each frame's smoothed landmarks."""

    landmarks: np.ndarray  # (N, 68, 2) float64, clip coordinates
    frames: dict[str, ClipFrames]  # per framing name, N frames each
    lost_frames: int = 0  # frames whose face was filled in from their neighbours

    def __post_init__(self) -> None:
        self.landmarks.setflags(write=False)
        counts = {len(frames) for frames in self.frames.values()}
        if counts != {len(self.landmarks)}:
            raise ValueError(f"a clip of {len(self.landmarks)} landmark frames and {sorted(counts)} picture frames")

    def __len__(self) -> int:
        return len(self.landmarks)

    @property
    def duration(self) -> float:
        return len(self) / FPS

    def index(self, frame: int) -> int:
        """The clip frame a session shows at its frame ``frame`` (:func:`ping_pong`)."""
        return ping_pong(frame, len(self))

    @property
    def nbytes(self) -> int:
        return int(self.landmarks.nbytes) + sum(frames.nbytes for frames in self.frames.values())


@dataclass(frozen=True, eq=False)
class PreparedClip:
    """What preparation makes of a video: its key, its size, the first frame's framings, the clip itself."""

    key: str
    width: int
    height: int
    box: Box  # the face square the ``face`` framing is centred on, fixed for the whole clip
    faces_seen: int
    detector: Detector
    framings: dict[str, Framing]  # frame 0 (as sessions decode it): size, origin and scale of every frame
    clip: AvatarClip


def read_clip(data: bytes, limits: ClipLimits, avatar_limits: AvatarLimits, max_output_side: int) -> PreparedClip:
    """Uploaded video bytes → a prepared clip; raises the errors of :mod:`gateway.errors` in words.

    Two passes over the video: the first finds the faces and keeps the ``portrait`` framing, the second makes
    the ``face`` framing around the face square of the whole clip (which only the first pass can know).
    """
    t0 = time.perf_counter()
    found: list[np.ndarray | None] = []
    portraits: list[bytes] = []
    tracker = _Tracker(cnn_frames=CNN_FRAMES)
    first: FaceDetection | None = None
    first_portrait: Framing | None = None
    lost_run = 0
    for image in decode_frames(data, limits):
        framing = portrait_framing(image, max_output_side)
        if first_portrait is None:
            first_portrait = framing
            height, width = image.shape[:2]
        elif image.shape[:2] != (height, width):
            raise UnsupportedImage("The video changes size part-way through; send a clip of one size.")
        detection = tracker.find(image, len(found) / FPS)
        lost_run = 0 if detection is not None else lost_run + 1
        if lost_run > MAX_LOST_FRAMES:  # refused now, not after searching the rest of the clip
            raise NoFaceInClip.lost((len(found) + 1 - lost_run) / FPS)
        first = first or detection
        found.append(None if detection is None else detection.landmarks)
        portraits.append(jpeg(framing.image))  # at once: decoded frames of a whole clip would take GBs
    assert first_portrait is not None  # decode_frames yields at least one frame or raises
    landmarks = smooth(_fill_lost(found))
    assert first is not None  # _fill_lost raised if no frame had a face
    # A face's size: the mean of its landmarks' width and height, as a photo's is its box's.
    sizes = (landmarks.max(axis=1) - landmarks.min(axis=1)).mean(axis=1)
    face_px = round(float(np.median(sizes)))
    if face_px < avatar_limits.min_face_px:
        raise FaceTooSmall(face_px, avatar_limits.min_face_px)
    squares = np.array([face_square(points, width, height) for points in landmarks])
    box = Box(*(int(v) for v in np.median(squares, axis=0).round()))
    faces: list[bytes] = []
    first_face: Framing | None = None
    for image in decode_frames(data, limits):
        framing = face_framing(image, box)
        first_face = first_face or framing
        faces.append(jpeg(framing.image))
    assert first_face is not None
    clip = AvatarClip(
        landmarks=landmarks,
        frames={"portrait": ClipFrames.of_jpegs(portraits), "face": ClipFrames.of_jpegs(faces)},
        lost_frames=sum(points is None for points in found),
    )
    # The framings of a clip avatar are those of its frame 0 as sessions decode it (from the JPEG), so whatever
    # reads a framing's picture sees what the frames show; size, origin and scale hold for every frame.
    framings = {
        name: Framing(clip.frames[name].frame(0), framing.origin, framing.scale)
        for name, framing in (("portrait", first_portrait), ("face", first_face))
    }
    log.info(
        "video %dx%d: %d frames (%.1f s), %d filled in, face %d px, %.1f MB kept, %.1f s",
        width,
        height,
        len(clip),
        clip.duration,
        clip.lost_frames,
        face_px,
        clip.nbytes / 1e6,
        time.perf_counter() - t0,
    )
    return PreparedClip(avatar_key(data), width, height, box, first.faces_seen, first.detector, framings, clip)
