"""The browser page (``web/``), served with headers that keep it from being framed or made to run others' code."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# The page loads only its own scripts and styles, plays video from MediaSource blobs and talks to its own
# origin (HTTP and WebSocket); nothing may frame it (clickjacking a microphone permission).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page may be opened as /?token=…: no other site hears of it through a Referer.
    "Referrer-Policy": "no-referrer",
}


class Page(StaticFiles):
    """Static files with :data:`PAGE_HEADERS` on every answer."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(PAGE_HEADERS)
        return response

    @staticmethod
    def paths(directory: Path) -> frozenset[str]:
        """The URL paths the page's files are served at (none if there is no page)."""
        if not directory.is_dir():
            return frozenset()
        files = {"/" + path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file()}
        return frozenset(files | {"/"})
