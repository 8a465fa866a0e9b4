"""The downloader against a local HTTP server that serves synthetic checkpoints (no internet here)."""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from export.download import DownloadError, download, download_official
from export.official import OFFICIAL_FILES, verify_present
from export.weights import read_checkpoint


@dataclass
class FileServer:
    """Serves files by name with Range support; can break off the next transfer after N bytes."""

    files: dict[str, bytes]
    break_after: int | None = None
    range_headers: list[str | None] = field(default_factory=list)
    url: str = ""


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = state.files.get(self.path.lstrip("/"))
            state.range_headers.append(self.headers.get("Range"))
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if (rng := self.headers.get("Range")) is not None:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if state.break_after is not None:
                payload, state.break_after = payload[: state.break_after], None
                self.wfile.write(payload)
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer(files={})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def _publish(monkeypatch: pytest.MonkeyPatch, name: str, body: bytes | None) -> str | None:
    """Make ``body`` the published bytes of the official file ``name`` (None: no digest known); its SHA-256."""
    digest = hashlib.sha256(body).hexdigest() if body is not None else None
    size = len(body) if body is not None else None
    monkeypatch.setitem(OFFICIAL_FILES, name, replace(OFFICIAL_FILES[name], sha256=digest, size=size))
    return digest


def test_downloads_an_official_file_from_a_mirror(
    file_server: FileServer,
    synthetic_checkpoint: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = synthetic_checkpoint("mapping_00229-model.pth.tar")
    file_server.files[source.name] = source.read_bytes()
    _publish(monkeypatch, source.name, source.read_bytes())  # the mirror holds the published bytes: they pass
    (path,) = download_official([source.name], tmp_path, base_url=file_server.url, progress=False)
    assert path.read_bytes() == source.read_bytes()
    assert not list(tmp_path.glob("*.partial"))
    assert "fc_exp.weight" in read_checkpoint(path)


def test_an_interrupted_transfer_resumes_where_it_stopped(file_server: FileServer, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4000
    file_server.files["f.bin"] = body
    file_server.break_after = 300_000
    destination = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"broke off|received 300000 bytes"):
        download(f"{file_server.url}/f.bin", destination, progress=False)
    assert not destination.exists()  # nothing incomplete is ever placed
    assert (tmp_path / "f.bin.partial").stat().st_size == 300_000
    # The digest covers the bytes of both attempts: the part already on disk is hashed before the rest streams in.
    download(f"{file_server.url}/f.bin", destination, sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert destination.read_bytes() == body
    assert file_server.range_headers == [None, "bytes=300000-"]


def test_a_mirror_serving_other_bytes_of_the_right_size_is_refused_and_nothing_is_left(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "mapping_00229-model.pth.tar"
    published = bytes(range(256)) * 2000
    expected = _publish(monkeypatch, name, published)
    altered = bytearray(published)
    altered[123_456] ^= 1  # one bit: same size, so only the digest can tell
    file_server.files[name] = bytes(altered)
    got = hashlib.sha256(altered).hexdigest()
    with pytest.raises(DownloadError) as refused:
        download_official([name], tmp_path, base_url=file_server.url, progress=False)
    message = str(refused.value)
    assert message.startswith(f"{name}: ") and f"expected {expected}" in message and f"is {got}" in message
    assert "removed" in message
    assert not list(tmp_path.iterdir())  # neither the file nor a .partial


def test_a_mirror_offering_another_size_is_refused_before_anything_is_written(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "GFPGANv1.4.pth"
    _publish(monkeypatch, name, b"published" * 1000)
    file_server.files[name] = b"an html error page"
    with pytest.raises(DownloadError, match=r"GFPGANv1\.4\.pth: .* offers 18 bytes, but the published file has 9000"):
        download_official([name], tmp_path, base_url=file_server.url, progress=False)
    assert not list(tmp_path.iterdir())


def test_a_file_without_a_known_digest_is_kept_with_a_warning(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = "GFPGANv1.4.pth"
    _publish(monkeypatch, name, None)
    file_server.files[name] = b"some weights" * 100
    with caplog.at_level(logging.WARNING, logger="export.download"):
        (path,) = download_official([name], tmp_path, base_url=file_server.url, progress=False)
    assert path.read_bytes() == file_server.files[name]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert name in warning.getMessage() and "UNVERIFIED" in warning.getMessage()
    assert hashlib.sha256(file_server.files[name]).hexdigest() in warning.getMessage()


def test_every_official_file_has_a_published_digest_and_a_fixed_address() -> None:
    for file in OFFICIAL_FILES.values():
        assert file.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", file.sha256), file.name
        assert file.size is not None and file.size > 100_000_000, file.name  # hundreds of MB, not an error page
        # A release asset or a Hugging Face file at a commit: neither moves under the same address.
        assert "/releases/download/v" in file.url or re.search(r"/resolve/[0-9a-f]{40}/", file.url), file.url


def test_verify_present_tells_a_wrong_file_from_a_right_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    right, wrong, unknown = "mapping_00229-model.pth.tar", "mapping_00109-model.pth.tar", "GFPGANv1.4.pth"
    _publish(monkeypatch, right, b"right bytes")
    _publish(monkeypatch, wrong, b"right bytes")
    _publish(monkeypatch, unknown, None)
    (tmp_path / right).write_bytes(b"right bytes")
    (tmp_path / wrong).write_bytes(b"wrong bytes")  # same size: the digest finds it
    (tmp_path / unknown).write_bytes(b"anything")
    problems, unverified = verify_present(tmp_path, [right, wrong, unknown, "wav2lip.pth"])  # wav2lip.pth absent
    assert len(problems) == 1 and problems[0].startswith(str(tmp_path / wrong)) and "SHA-256" in problems[0]
    assert unverified == [unknown]


def test_an_existing_file_is_not_fetched_again(file_server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "GFPGANv1.4.pth").write_bytes(b"already here")
    download_official(["GFPGANv1.4.pth"], tmp_path, base_url=file_server.url, progress=False)
    assert file_server.range_headers == []


def test_http_errors_name_the_file_and_the_status(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"GFPGANv1\.4\.pth: .* answered HTTP 404"):
        download_official(["GFPGANv1.4.pth"], tmp_path, base_url=file_server.url, progress=False)


def test_an_unreachable_server_gives_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match=r"cannot reach .* download the file by hand"):
        download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin", progress=False, timeout=5)


@pytest.mark.parametrize(("flag", "name"), [([], "wav2lip_gan.pth"), (["wav2lip.pth"], "wav2lip.pth")])
def test_wav2lip_is_fetched_with_the_licence_flag(
    file_server: FileServer, tmp_path: Path, flag: list[str], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from export.__main__ import main
    from export.official import REQUIRED_FOR_SIZE

    for required in REQUIRED_FOR_SIZE[256]:
        (tmp_path / required).write_bytes(b"already here")
    file_server.files[name] = b"wav2lip weights " * 1000
    _publish(monkeypatch, name, file_server.files[name])
    argv = ["download", "--checkpoints", str(tmp_path), "--base-url", file_server.url, "--wav2lip", *flag]
    assert main([*argv, "--accept-wav2lip-licence"]) == 0
    assert (tmp_path / name).read_bytes() == file_server.files[name]
    assert file_server.range_headers == [None]  # one request: the required files were already there
