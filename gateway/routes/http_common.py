"""Pieces the HTTP routes share: the token dependency and reading uploads within their limits."""

from __future__ import annotations

from fastapi import Depends, Request
from starlette.datastructures import UploadFile

from gateway.access import check_token
from gateway.context import context_of
from gateway.errors import LipsyncError


def _authorised(request: Request) -> None:
    check_token(request, context_of(request).settings.auth_token)


Authorised = Depends(_authorised)


async def read_limited(upload: UploadFile, limit: int, too_large: LipsyncError) -> bytes:
    """The upload's bytes, refusing (with ``too_large``) as soon as more than ``limit`` arrive."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data
