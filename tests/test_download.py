"""The downloader against a local HTTP server that serves synthetic checkpoints (no internet here)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from export.download import DownloadError, download, download_official
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


def test_downloads_an_official_file_from_a_mirror(
    file_server: FileServer, synthetic_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    source = synthetic_checkpoint("mapping_00229-model.pth.tar")
    file_server.files[source.name] = source.read_bytes()
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
    download(f"{file_server.url}/f.bin", destination, progress=False)
    assert destination.read_bytes() == body
    assert file_server.range_headers == [None, "bytes=300000-"]


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
    file_server: FileServer, tmp_path: Path, flag: list[str], name: str
) -> None:
    from export.__main__ import main
    from export.official import REQUIRED_FOR_SIZE

    for required in REQUIRED_FOR_SIZE[256]:
        (tmp_path / required).write_bytes(b"already here")
    file_server.files[name] = b"wav2lip weights " * 1000
    argv = ["download", "--checkpoints", str(tmp_path), "--base-url", file_server.url, "--wav2lip", *flag]
    assert main([*argv, "--accept-wav2lip-licence"]) == 0
    assert (tmp_path / name).read_bytes() == file_server.files[name]
    assert file_server.range_headers == [None]  # one request: the required files were already there
