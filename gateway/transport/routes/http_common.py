"""Pieces the HTTP routes share: reading uploads within their limits."""

from __future__ import annotations

from starlette.datastructures import UploadFile

from gateway.errors import LipsyncError


async def read_limited(upload: UploadFile, limit: int, too_large: LipsyncError) -> bytes:
    """The upload's bytes, refusing (with ``too_large``) as soon as more than ``limit`` arrive."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data
