"""Download the official weight files from the addresses upstream publishes.

Resumes an interrupted transfer (HTTP Range on the ``.partial`` file), checks the size against what the
server announced, and moves the file into place atomically only when it is complete.
"""

from __future__ import annotations

import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from export.official import OFFICIAL_FILES, OfficialFile

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched; the message says which, from where, and why."""


def _content_length(response: urllib.response.addinfourl) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value is not None else None


def download(url: str, destination: Path, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Fetch ``url`` into ``destination``, resuming ``destination.partial`` if a previous attempt left one."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete (or longer than the file)
            raise DownloadError(
                f"{destination.name}: the server refused to resume at byte {have} (HTTP 416); "
                f"delete {partial} and try again"
            ) from err
        raise DownloadError(f"{destination.name}: {url} answered HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"{destination.name}: cannot reach {url} ({reason}). Check the network, or download the file "
            f"by hand into {destination.parent}/"
        ) from err

    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range header: start over
        remaining = _content_length(response)
        total = have + remaining if remaining is not None else None
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=destination.name, disable=not progress
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"{destination.name}: the transfer broke off after {out.tell()} bytes ({err}); "
                    "run the same command again to resume"
                ) from err
            out.flush()
            os.fsync(out.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"{destination.name}: received {size} bytes, the server announced {total}; "
            "run the same command again to resume"
        )
    partial.replace(destination)
    log.info("downloaded %s (%d bytes)", destination, size)
    return destination


def download_official(
    names: Iterable[str], directory: Path, *, base_url: str | None = None, progress: bool = True
) -> list[Path]:
    """Download the named official files into ``directory``, skipping those already there.

    ``base_url`` replaces the upstream release address (a mirror, or a local server in tests).
    """
    paths = []
    for name in names:
        file: OfficialFile = OFFICIAL_FILES[name]
        destination = directory / name
        if destination.is_file():
            log.info("%s is already present", destination)
            paths.append(destination)
            continue
        url = f"{base_url.rstrip('/')}/{name}" if base_url else file.url
        paths.append(download(url, destination, progress=progress))
    return paths
