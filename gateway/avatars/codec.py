"""An avatar record as bytes and back: what gateways share through Redis.

One compressed ``.npz`` (numpy arrays and strings only: loading needs no pickle), with a format version; the
engines' parts are stored under ``part.<engine>.<name>`` by their own ``to_arrays()`` and read back by the
engine (``Engine.part_from_arrays``, which checks their shapes). The framings — most of a record's bytes — are
stored as PNG (lossless, and ≈ 40 % smaller than the npz's deflate of the raw pixels, in half the time: 2.2 vs
3.5 MB for a 1280² portrait). A record written by another version of this format is refused, and then simply
made again from the upload.

Records come from Redis, which other pods can write: ``decode`` trusts nothing in them. The stored bytes and
what they inflate to are capped (:class:`RecordLimits`) and read with bounded reads, PNG dimensions are checked
in the PNG's header before any pixel is decoded, every array's dtype and shape is checked, and the record must
be the one of the avatar asked for. (Who wrote it is checked before, by ``gateway.avatars.shared``' HMAC.)
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np

from gateway.avatars.framing import FACE_FRAME_SIZE, FRAMINGS, Framing
from gateway.avatars.portrait import DEFAULT_LIMITS, Box, Detector
from gateway.avatars.store import AvatarState
from gateway.avatars.video import AvatarClip, ClipFrames
from gateway.engines import Engine

FORMAT = "lipsync-avatar-record/3"

MiB = 2**20
# A record has ≈ 11 members, plus 4 per Wav2Lip face; far more is not a record of ours.
MAX_MEMBERS = 512
# Central directory bytes per member (46 fixed, the name, zipfile's zip64 extra): bounds what ZipFile parses.
MAX_DIRECTORY_ENTRY = 192
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A clip frame's size is read from its JPEG header, which (with OpenCV's tables) lies in its first bytes.
JPEG_HEADER_BYTES = 1024

# The fixed members and what they must be (the framings and the engines' parts are checked where they are read).
_FIXED: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {
    "landmarks": ((68, 2), np.dtype(np.float64)),
}


class RecordError(ValueError):
    """The bytes are not an avatar record of this format (or not one this gateway accepts)."""


class RecordTooLarge(RecordError):
    """A record over :class:`RecordLimits`: not written, and refused when read."""


@dataclass(frozen=True)
class RecordLimits:
    """What a record may be, from the settings that bound a legitimate one.

    The caps follow ``max_output_side`` (S), which bounds the only large members: the ``portrait`` framing
    (a PNG: ≤ 3·S² bytes even for incompressible pixels; a photo is ≈ 1.2·S²) and Wav2Lip's paste weights
    (float32 over the face box, ≤ 4·S² per face, deflating well). Measured records are 1.2 MB at 512² and
    2.9 MB at 1280² (docs/deploy.md). Stored: 8 MiB + 4·S² (14.3 MiB at S = 1280, 72 MiB at 4096); inflated:
    16 MiB + 12·S² (the PNG plus two whole-framing faces, and the fixed members: the 512² face framing, the crops,
    each face's 0.2 MB input): 34.8 MiB at 1280, 208 MiB at 4096.
    """

    max_output_side: int = 1280
    max_photo_pixels: int = DEFAULT_LIMITS.max_pixels
    # A video avatar's frames (JPEG) and landmarks: records of longer or larger clips are not shared (the
    # gateway that made one keeps it), and refused when read. 0: video avatars are not shared at all (the
    # gateway sets it from LIPSYNC_MAX_SHARED_VIDEO_MB).
    max_clip_bytes: int = 0
    max_clip_frames: int = 500

    @property
    def clip_budget(self) -> int:
        """What a record's clip may add, its landmarks and offsets included."""
        return self.max_clip_bytes + self.max_clip_frames * (68 * 2 * 8 + 2 * 8) if self.max_clip_bytes else 0

    @property
    def max_record_bytes(self) -> int:
        return 8 * MiB + 4 * self.max_output_side**2 + self.clip_budget

    @property
    def max_inflated_bytes(self) -> int:
        return 16 * MiB + 12 * self.max_output_side**2 + self.clip_budget


@dataclass(frozen=True)
class RecordCodec:
    """The codec ``gateway.avatars.shared`` uses: ``snapshot`` on the event loop (the avatar's parts may grow
    there), ``pack`` and ``decode`` in a worker thread."""

    engines: Mapping[str, Engine]
    limits: RecordLimits = RecordLimits()

    @property
    def max_record_bytes(self) -> int:
        return self.limits.max_record_bytes

    def snapshot(self, state: AvatarState) -> dict[str, Any]:
        return snapshot(state)

    def pack(self, arrays: dict[str, Any]) -> bytes:
        return pack(arrays, self.limits)

    def decode(self, data: bytes, avatar_id: str) -> AvatarState:
        return decode(data, self.engines, avatar_id, self.limits)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def snapshot(state: AvatarState) -> dict[str, Any]:
    """The record's members, framings still as pixels. Cheap (references, no copies), and run where the
    avatar's parts are changed, so that encoding elsewhere never sees a dict change under it."""
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "meta": np.array(
            json.dumps(
                {
                    "id": state.id,
                    "width": state.width,
                    "height": state.height,
                    "box": list(state.box),
                    "faces_seen": state.faces_seen,
                    "detector": state.detector,
                    "framings": {name: [f.origin, f.scale] for name, f in state.framings.items()},
                    **({} if state.clip is None else {"clip": {"lost_frames": state.clip.lost_frames}}),
                }
            )
        ),
        "landmarks": state.landmarks,
    }
    if state.clip is not None:
        arrays["clip.landmarks"] = state.clip.landmarks
        for name, frames in state.clip.frames.items():
            arrays[f"clip.{name}.jpeg"] = frames.data
            arrays[f"clip.{name}.offsets"] = frames.offsets
    for name, framing in state.framings.items():
        arrays[f"framing.{name}"] = framing.image
    for engine, part in list(state.parts.items()):
        for name, array in part.to_arrays().items():
            arrays[f"part.{engine}.{name}"] = array
    return arrays


def pack(arrays: dict[str, Any], limits: RecordLimits = RecordLimits()) -> bytes:
    """A snapshot's bytes: PNG framings, deflated; RecordTooLarge when a reader would refuse them."""
    members = {name: _png(a) if name.startswith("framing.") else a for name, a in arrays.items()}
    clip = sum(int(a.nbytes) for name, a in members.items() if name.startswith("clip."))
    if clip > limits.clip_budget:
        raise RecordTooLarge(f"its video takes {clip / MiB:.1f} MiB, over {limits.max_clip_bytes / MiB:.1f} MiB")
    inflated = sum(int(np.asarray(a).nbytes) for a in members.values())
    if inflated > limits.max_inflated_bytes:
        raise RecordTooLarge(
            f"its arrays take {inflated / MiB:.1f} MiB, over {limits.max_inflated_bytes / MiB:.1f} MiB"
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **members)
    if buffer.tell() > limits.max_record_bytes:
        raise RecordTooLarge(f"{buffer.tell() / MiB:.1f} MiB, over {limits.max_record_bytes / MiB:.1f} MiB")
    return buffer.getvalue()


def encode(state: AvatarState, limits: RecordLimits = RecordLimits()) -> bytes:
    return pack(snapshot(state), limits)


def _png(image: np.ndarray) -> np.ndarray:
    # The channels are written in the array's order and read back in it: no colour conversion either way.
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} {image.dtype} framing as PNG")
    return np.asarray(encoded, dtype=np.uint8).reshape(-1)


# ---------------------------------------------------------------------------------------------------------------
# Reading


def decode(
    data: bytes, engines: Mapping[str, Engine], avatar_id: str, limits: RecordLimits = RecordLimits()
) -> AvatarState:
    """The record of ``avatar_id``; RecordError (in words) on anything else."""
    arrays = _members(data, limits)
    if _text(arrays.get("format")) != FORMAT:
        raise RecordError(f"not an avatar record of format {FORMAT!r}")
    try:
        meta = json.loads(_text(arrays["meta"]) or "")
        if not isinstance(meta, dict):
            raise ValueError("its description is not an object")
        if meta.get("id") != avatar_id:  # before any pixel is decoded: someone else's record is not ours to read
            raise RecordError(f"the record of another avatar ({str(meta.get('id'))[:12]!r}) stored under this one")
        width, height = _int(meta["width"], "width", 1), _int(meta["height"], "height", 1)
        if width * height > limits.max_photo_pixels:
            raise ValueError(f"a {width}×{height} photo, over {limits.max_photo_pixels} pixels")
        box = Box(*_ints(meta["box"], 4, "box"))
        if not (0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height):
            raise ValueError(f"a face box {tuple(box)} outside the {width}×{height} photo")
        fixed = {name: _checked(arrays[name], name, shape, dtype) for name, (shape, dtype) in _FIXED.items()}
        if not np.isfinite(fixed["landmarks"]).all():
            raise ValueError("landmarks that are not finite")
        if not isinstance(meta["framings"], dict) or set(meta["framings"]) != set(FRAMINGS):
            raise ValueError(f"framings {sorted(meta['framings'])}, not {sorted(FRAMINGS)}")
        framings = {}
        for name, (origin, scale) in meta["framings"].items():
            origin, scale = _floats(origin, "origin"), _floats(scale, "scale")
            if min(scale) <= 0:
                raise ValueError(f"a {name} framing of scale {scale}")
            framings[name] = Framing(_framing_image(arrays[f"framing.{name}"], name, limits), origin, scale)
        state = AvatarState(
            id=avatar_id,
            width=width,
            height=height,
            box=box,
            landmarks=fixed["landmarks"],
            faces_seen=_int(meta["faces_seen"], "faces_seen", 0),
            detector=_detector(meta.get("detector", "hog")),
            framings=framings,
            clip=None if "clip" not in meta else _clip(arrays, meta["clip"], framings, width, height, limits),
        )
        for engine_name, engine in engines.items():
            prefix = f"part.{engine_name}."
            part = {name.removeprefix(prefix): a for name, a in arrays.items() if name.startswith(prefix)}
            if part:
                state.add_part(engine_name, engine.part_from_arrays(part, state))
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, RecursionError) as err:
        raise RecordError(f"a damaged avatar record ({err})") from err
    return state


def _members(data: bytes, limits: RecordLimits) -> dict[str, np.ndarray]:
    """The npz's arrays, never inflating more than ``limits.max_inflated_bytes`` whatever its headers claim."""
    if len(data) > limits.max_record_bytes:
        raise RecordTooLarge(f"a record of {len(data) / MiB:.1f} MiB, over {limits.max_record_bytes / MiB:.1f} MiB")
    _check_directory(data)
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            claimed = sum(info.file_size for info in members)
            if claimed > limits.max_inflated_bytes:
                raise RecordTooLarge(
                    f"a record inflating to {claimed / MiB:.1f} MiB, over {limits.max_inflated_bytes / MiB:.1f} MiB"
                )
            for info in members:
                name = info.filename.removesuffix(".npy")
                if name == info.filename or name in arrays:
                    raise RecordError(f"not an avatar record (member {info.filename[:40]!r})")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 1:
                    raise RecordError(f"not an avatar record (member {name[:40]!r} compressed another way)")
                # The header's size may lie: read no more than it claimed (ZipExtFile inflates in small steps up
                # to what is asked), and let the CRC check refuse a member that does not end there.
                with archive.open(info) as member:
                    raw = member.read(info.file_size + 1)
                if len(raw) != info.file_size:
                    raise RecordError(f"not an avatar record (member {name[:40]!r} is not the size it claims)")
                arrays[name] = _npy(raw, name)
    except RecordError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise RecordError(f"not an avatar record ({err})") from err
    return arrays


def _check_directory(data: bytes) -> None:
    """Refuse a zip whose central directory lists more members than a record has, before ZipFile parses it."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or len(data) < end + 22:
        raise RecordError("not an avatar record")
    _, _, _, count, total, directory_size, _, _ = struct.unpack("<4s4H2LH", data[end : end + 22])
    if max(count, total) > MAX_MEMBERS or directory_size > MAX_MEMBERS * MAX_DIRECTORY_ENTRY:
        raise RecordError(f"not an avatar record ({max(count, total)} members, {directory_size} directory bytes)")


def _npy(raw: bytes, name: str) -> np.ndarray:
    """One ``.npy`` member: plain numbers or text only, and exactly as many bytes as its header says."""
    stream = io.BytesIO(raw)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):  # what numpy writes for arrays of ours
        raise RecordError(f"not an avatar record (member {name[:40]!r} in .npy format {version})")
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = header(stream)
    if dtype.hasobject or dtype.kind not in "biufU" or dtype.fields is not None or dtype.subdtype is not None:
        raise RecordError(f"not an avatar record (member {name[:40]!r} of dtype {dtype})")
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - stream.tell() != expected:
        raise RecordError(f"not an avatar record (member {name[:40]!r} holds other than its {shape} {dtype})")
    flat = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _framing_image(data: np.ndarray, name: str, limits: RecordLimits) -> np.ndarray:
    """A PNG framing's pixels; its size is checked in the PNG's header first (OpenCV would decode up to 2³⁰
    pixels of whatever the header says)."""
    if data.dtype != np.uint8 or data.ndim != 1:  # OpenCV would raise its own error type on these
        raise ValueError(f"a framing stored as {data.dtype} {data.shape}, not PNG bytes")
    width, height = _png_size(data[:26].tobytes())
    # The portrait's sides are rounded to even numbers: an odd max_output_side can be exceeded by one.
    largest = FACE_FRAME_SIZE if name == "face" else limits.max_output_side + 1
    if name == "face" and (width, height) != (FACE_FRAME_SIZE, FACE_FRAME_SIZE):
        raise ValueError(f"a face framing of {width}×{height}, not {FACE_FRAME_SIZE}×{FACE_FRAME_SIZE}")
    if not (2 <= width <= largest and 2 <= height <= largest):
        raise ValueError(
            f"a {name} framing of {width}×{height}, over this server's {limits.max_output_side} pixels a side "
            "(LIPSYNC_MAX_OUTPUT_SIDE)"
        )
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise ValueError(f"a {name} framing that is not a {width}×{height} 3-channel PNG")
    return image


def _png_size(head: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, which must be 8-bit RGB (what the framings are written as)."""
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise ValueError("a framing that is not a PNG")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if (depth, colour) != (8, 2):
        raise ValueError(f"a framing PNG of bit depth {depth} and colour type {colour}, not 8-bit RGB")
    return width, height


def _checked(array: np.ndarray, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"{name} of {array.dtype} {array.shape}, not {dtype} {shape}")
    return array


def _text(array: np.ndarray | None) -> str | None:
    if array is None or array.dtype.kind != "U" or array.shape != ():
        return None
    return str(array)


def _clip(
    arrays: dict[str, np.ndarray],
    meta: Any,
    framings: dict[str, Framing],
    width: int,
    height: int,
    limits: RecordLimits,
) -> AvatarClip:
    """A video avatar's frames, every one checked to be a JPEG of its framing's size (read from its header: a
    frame is only decoded when a session shows it)."""
    if not isinstance(meta, dict):
        raise ValueError("a clip description that is not an object")
    landmarks = arrays["clip.landmarks"]
    count = landmarks.shape[0] if landmarks.ndim == 3 else 0
    if not 1 <= count <= limits.max_clip_frames:
        raise ValueError(f"a clip of {count} frames, not 1 to {limits.max_clip_frames}")
    landmarks = _checked(landmarks, "clip landmarks", (count, 68, 2), np.dtype(np.float64))
    side = max(width, height)  # landmarks may stray past the picture's edge, not far
    if not np.isfinite(landmarks).all() or (np.abs(landmarks - side / 2) > 1.5 * side).any():
        raise ValueError("clip landmarks far outside the picture")
    frames = {}
    for name, framing in framings.items():
        data = _checked_kind(arrays[f"clip.{name}.jpeg"], f"clip {name} frames", np.uint8, 1)
        offsets = _checked(arrays[f"clip.{name}.offsets"], f"clip {name} offsets", (count + 1,), np.dtype(np.int64))
        if offsets[0] != 0 or offsets[-1] != data.size or (np.diff(offsets) <= 0).any():
            raise ValueError(f"clip {name} offsets that do not divide its frames")
        for index in range(count):
            if _jpeg_size(data[offsets[index] : offsets[index] + JPEG_HEADER_BYTES].tobytes()) != framing.size:
                raise ValueError(f"clip {name} frame {index} is not a {framing.size[0]}×{framing.size[1]} JPEG")
        frames[name] = ClipFrames(data, offsets)
    return AvatarClip(landmarks, frames, lost_frames=_int(meta.get("lost_frames", 0), "lost_frames", 0))


def _jpeg_size(head: bytes) -> tuple[int, int]:
    """(width, height) from a baseline or progressive JPEG's frame header, within its first bytes."""
    if head[:2] != b"\xff\xd8":
        raise ValueError("a clip frame that is not a JPEG")
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            raise ValueError("a clip frame whose JPEG markers are damaged")
        marker, length = head[at + 1], struct.unpack(">H", head[at + 2 : at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    raise ValueError("a clip frame whose JPEG header is not where a frame's size is")


def _checked_kind(array: np.ndarray, name: str, dtype: type, ndim: int) -> np.ndarray:
    if array.dtype != np.dtype(dtype) or array.ndim != ndim:
        raise ValueError(f"{name} of {array.dtype} {array.shape}")
    return array


def _detector(value: Any) -> Detector:
    # Optional within this format: records written before it was kept were all found by HOG, and a gateway of
    # that time reading a newer record ignores it.
    if value == "hog" or value == "cnn":
        return cast(Detector, value)
    raise ValueError(f"a face detector {str(value)[:20]!r}, not 'hog' or 'cnn'")


def _int(value: Any, name: str, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not least <= value < 2**31:
        raise ValueError(f"{name} {str(value)[:20]!r} is not a whole number ≥ {least}")
    return value


def _ints(values: Any, count: int, name: str) -> list[int]:
    if not isinstance(values, list) or len(values) != count:
        raise ValueError(f"{name} is not {count} numbers")
    return [_int(v, name, 0) for v in values]


def _floats(values: Any, name: str) -> tuple[float, float]:
    if not (isinstance(values, list) and len(values) == 2 and all(isinstance(v, int | float) for v in values)):
        raise ValueError(f"a framing {name} that is not 2 numbers")
    x, y = float(values[0]), float(values[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"a framing {name} that is not finite")
    return x, y
