"""Errors a user can act on: each has a message for people and a stable ``code`` for machines.

The protocol layer maps ``code`` to a WebSocket close code or an HTTP status; the message is shown as is,
so it says what was wrong and quotes the value and the limit.
"""

from __future__ import annotations

from typing import ClassVar


class LipsyncError(Exception):
    """Base of every error whose message is meant for the user."""

    code: ClassVar[str] = "lipsync_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoFaceFound(LipsyncError):
    """The portrait has no face the detector can see."""

    code = "no_face_found"

    def __init__(self) -> None:
        super().__init__(
            "No face was found in the image. Use a photo with one face looking roughly at the camera, "
            "not turned away or covered."
        )


class FaceTooSmall(LipsyncError):
    """A face was found, but too few pixels across to animate."""

    code = "face_too_small"

    def __init__(self, face_px: int, minimum_px: int) -> None:
        super().__init__(
            f"The face is too small: {face_px} pixels across; the minimum is {minimum_px} pixels. "
            "Use a larger photo or one taken closer to the face."
        )
        self.face_px = face_px
        self.minimum_px = minimum_px


class UnsupportedImage(LipsyncError):
    """The file is not an image we read (wrong format, corrupt or truncated)."""

    code = "unsupported_image"


class ImageTooLarge(LipsyncError):
    """The file has more bytes or more pixels than the configured limits."""

    code = "image_too_large"

    @classmethod
    def for_bytes(cls, size: int, limit: int) -> ImageTooLarge:
        return cls(f"The file is too large: {size:,} bytes; the limit is {limit:,} bytes.")

    @classmethod
    def for_limit(cls, limit: int) -> ImageTooLarge:
        return cls(f"The file is larger than the limit of {limit:,} bytes.")

    @classmethod
    def for_pixels(cls, width: int, height: int, limit: int) -> ImageTooLarge:
        return cls(
            f"The image is too large: {width}×{height} = {width * height:,} pixels; the limit is {limit:,} pixels."
        )


class BadMessage(LipsyncError):
    """A protocol message that is malformed, unknown, out of order or has invalid fields."""

    code = "bad_message"


class UnknownAvatar(LipsyncError):
    code = "unknown_avatar"

    def __init__(self, avatar_id: str, why: str = "") -> None:
        because = f" ({why})" if why else ""
        super().__init__(f"Unknown avatar {avatar_id!r}{because}: upload the portrait first (POST /v1/avatars).")


class UnsupportedAudio(LipsyncError):
    """Audio that cannot be decoded, or in a format the session did not announce."""

    code = "unsupported_audio"


class TooLarge(LipsyncError):
    """A message, upload or session over its configured limit."""

    code = "too_large"


class Busy(LipsyncError):
    code = "busy"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The server is busy: all {limit} session slots are in use. Try again in a moment.")


class PreparationBusy(LipsyncError):
    """Portrait preparation is at its concurrency limit and its queue is full."""

    code = "busy"

    def __init__(self, at_once: int, waiting: int) -> None:
        super().__init__(
            f"The server is busy preparing other portraits ({at_once} at a time, {waiting} waiting). "
            "Try again in a moment."
        )


class SessionLimit(LipsyncError):
    """One client already holds its share of the session slots."""

    code = "session_limit"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This client already has {limit} session(s) open, the most one client may hold at a time. "
            "Finish or close one first."
        )


class Timeout(LipsyncError):
    """A client that did not send what was due in time: a first message, or audio for a while."""

    code = "timeout"


class StartTimeout(Timeout):
    code = "start_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"No first message within {seconds:g} s of connecting; the connection was closed.")


class IdleTimeout(Timeout):
    code = "idle_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"No audio and no `end` for {seconds:g} s; the session was closed to free its slot. "
            "Send `end` when the audio is over."
        )


class BodyTimeout(Timeout):
    code = "body_timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The request's body did not arrive within {seconds:g} s of its headers; send it faster or smaller "
            "(LIPSYNC_BODY_TIMEOUT_S sets the limit)."
        )


class OriginNotAllowed(LipsyncError):
    code = "origin_not_allowed"

    def __init__(self, origin: str) -> None:
        super().__init__(
            f"Requests from the web page at {origin!r} are not allowed here (LIPSYNC_ALLOWED_ORIGINS lists the "
            "pages that may use this server besides its own)."
        )


class HostNotAllowed(LipsyncError):
    code = "host_not_allowed"

    def __init__(self, host: str) -> None:
        super().__init__(
            f"This server does not answer to the name {host!r} (LIPSYNC_ALLOWED_HOSTS lists the names it answers "
            "to besides its IP addresses and localhost)."
        )


class SocketLimit(LipsyncError):
    """One client already holds its share of open WebSockets."""

    code = "socket_limit"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"This client already has {limit} WebSocket(s) open, the most one client may hold at a time. "
            "Close one first."
        )


class SessionExpired(LipsyncError):
    """A session past its absolute wall-clock cap, whatever it was waiting on."""

    code = "session_expired"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The session ran for {seconds:g} s, the most any session may last here (its limit plus time to "
            "finish); it was closed to free its slot."
        )


class Unauthorized(LipsyncError):
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("Missing or wrong access token.")


class EngineUnavailable(LipsyncError):
    """The engine a client asked for is not served here (its models are not in Triton's repository)."""

    code = "engine_unavailable"

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(
            f"The {engine} engine is not available on this server ({reason}). Its models must be exported and "
            "served (see the README: weights)."
        )


class PhotosOnly(LipsyncError):
    """The engine asked for animates photos, and the avatar is a video."""

    code = "engine_unavailable"

    def __init__(self, engine: str, video_engines: list[str]) -> None:
        others = f" (or the {' or '.join(video_engines)} engine)" if video_engines else ""
        super().__init__(
            f"The {engine} engine animates photos only, and this avatar is a video. Upload a photo for it{others}."
        )


class InferenceUnavailable(LipsyncError):
    """Triton is unreachable, not ready, or a model call failed; the gateway itself stays up."""

    code = "inference_unavailable"


class InferenceBusy(InferenceUnavailable):
    """Triton refused a call because the model's queue is full: it is alive but at capacity (a later try may
    succeed). An InferenceUnavailable, so code that handles a failed Triton call handles this one too."""

    code = "busy"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The inference server is at capacity (its queue for {model!r} is full); try again in a moment."
        )
        self.model = model


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: a user-facing one if any, else the first."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    return next((e for e in leaves if isinstance(e, LipsyncError)), leaves[0] if leaves else group)


# How each error ends a WebSocket (RFC 6455 codes; 4000–4999 are ours) and answers over HTTP.
CLOSE_CODES: dict[str, int] = {
    "bad_message": 4400,
    "unauthorized": 4401,
    "unknown_avatar": 4404,
    "unsupported_audio": 4415,
    "too_large": 1009,
    "image_too_large": 1009,
    "busy": 4503,
    "session_limit": 4429,
    "start_timeout": 4408,
    "idle_timeout": 4408,
    "origin_not_allowed": 4403,
    "host_not_allowed": 4403,
    "socket_limit": 4429,
    "session_expired": 4408,
    "inference_unavailable": 1011,
    "engine_unavailable": 4503,
}
HTTP_STATUS: dict[str, int] = {
    "bad_message": 400,
    "no_face_found": 422,
    "face_too_small": 422,
    "unsupported_image": 415,
    "unsupported_audio": 415,
    "image_too_large": 413,
    "too_large": 413,
    "unauthorized": 401,
    "origin_not_allowed": 403,
    "host_not_allowed": 421,
    "unknown_avatar": 404,
    "busy": 503,
    "session_limit": 429,
    "socket_limit": 429,
    "body_timeout": 408,
    "session_expired": 503,
    "inference_unavailable": 503,
    "engine_unavailable": 503,
}
