"""Errors over HTTP: one JSON body for every refusal, and its description for the OpenAPI document."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.errors import HTTP_STATUS, LipsyncError


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """``{"error": {"code": "…", "message": "…"}}``: ``code`` is stable for programs, ``message`` is for people."""

    error: ErrorDetail


def status_of(error: LipsyncError) -> int:
    return HTTP_STATUS.get(error.code, 400)


def error_response(error: LipsyncError) -> JSONResponse:
    return body_response(error.code, error.message, status_of(error))


def body_response(code: str, message: str, status: int, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=dict(headers) if headers else None)


# Refusals raised by the framework itself (form parsing, routing), worded in the same body.
FRAMEWORK_CODES = {400: "bad_message", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


_MEANINGS = {
    400: "a malformed request (bad_message)",
    401: "missing or wrong access token (unauthorized)",
    403: "a web page of another origin (origin_not_allowed)",
    404: "unknown avatar (unknown_avatar)",
    421: "a Host this server does not answer to (host_not_allowed)",
    408: "the body did not arrive within LIPSYNC_BODY_TIMEOUT_S of the headers (body_timeout)",
    413: "over a size limit (image_too_large, too_large)",
    415: "not an image or audio we read (unsupported_image, unsupported_audio)",
    422: "no usable face in the portrait (no_face_found, face_too_small)",
    429: "this client holds its share of sessions (session_limit)",
    503: "all session slots busy, or the inference server unavailable (busy, inference_unavailable)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with the error body and what it means."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}
