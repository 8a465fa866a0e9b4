"""Download the official weight files from the addresses upstream publishes.

Resumes an interrupted transfer (HTTP Range on the ``.partial`` file), checks the size against what the
server announced and, where the published SHA-256 is known, the digest (computed while the bytes stream in), and
moves the file into place atomically only when it is complete and matches. A file that does not match is removed.
"""

from __future__ import annotations

import hashlib
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


def _digest_of_partial(partial: Path) -> hashlib._Hash:
    """The running SHA-256 of what an earlier attempt already wrote, so that a resumed transfer is hashed whole."""
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Fetch ``url`` into ``destination``, resuming ``destination.partial`` if a previous attempt left one.

    ``sha256`` and ``size`` are the published file's: a server that offers another size is refused before any
    byte is written, and a file whose digest differs is removed instead of being put in place. Without
    ``sha256`` the file is kept, with a warning that it is unverified.
    """
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
        if size is not None and total is not None and total != size:
            partial.unlink(missing_ok=True)  # a resumed part of another file is no use either
            raise DownloadError(
                f"{destination.name}: {url} offers {total} bytes, but the published file has {size}, so it is "
                "another file; nothing was kept. Check the address (or the mirror given with --base-url)"
            )
        digest = _digest_of_partial(partial) if resumed else hashlib.sha256()
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=destination.name, disable=not progress
            ) as bar,
        ):
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"{destination.name}: the transfer broke off after {out.tell()} bytes ({err}); "
                    "run the same command again to resume"
                ) from err
            out.flush()
            os.fsync(out.fileno())
    received = partial.stat().st_size
    # Without a Content-Length the published size still tells an incomplete transfer from a wrong file.
    expected = total if total is not None else size
    if expected is not None and received != expected:
        raise DownloadError(
            f"{destination.name}: received {received} bytes, expected {expected}; run the same command again to resume"
        )
    got = digest.hexdigest()
    if sha256 is not None and got != sha256:
        partial.unlink()
        raise DownloadError(
            f"{destination.name}: the downloaded file is not the published one: its SHA-256 is {got}, "
            f"expected {sha256}. The file was removed. {url} serves other bytes under this name; "
            "download from the upstream address, or from a mirror that holds the published file"
        )
    partial.replace(destination)
    if sha256 is None:
        log.warning(
            "%s is UNVERIFIED: no published SHA-256 is known for it, so nothing shows it is the file its authors "
            "released (its SHA-256 is %s)",
            destination,
            got,
        )
    log.info("downloaded %s (%d bytes, SHA-256 %s)", destination, received, got)
    return destination


def download_official(
    names: Iterable[str], directory: Path, *, base_url: str | None = None, progress: bool = True
) -> list[Path]:
    """Download the named official files into ``directory``, skipping those already there.

    ``base_url`` replaces the upstream release address (a mirror, or a local server in tests); the files it
    serves are held to the same published SHA-256 digests.
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
        paths.append(download(url, destination, sha256=file.sha256, size=file.size, progress=progress))
    return paths
