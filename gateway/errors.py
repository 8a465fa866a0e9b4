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
    def for_pixels(cls, width: int, height: int, limit: int) -> ImageTooLarge:
        return cls(
            f"The image is too large: {width}×{height} = {width * height:,} pixels; the limit is {limit:,} pixels."
        )
