"""The embedded tritonserver launcher, against the real server from the nvidia-pytriton wheel.

The model repositories are tiny Python-backend models written into tmp dirs, so these tests need no export.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from gateway_helpers import processes_mentioning

from gateway.triton.server import EmbeddedTriton, TritonStartError, find_tritonserver

LOG = logging.getLogger(__name__)
pytestmark = pytest.mark.triton

ADD_ONE_CONFIG = """\
backend: "python"
max_batch_size: 8
input [ { name: "X", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

ADD_ONE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x + 1).astype(np.float32))]))
        return responses
"""

BROKEN_MESSAGE = "add_one refuses to start: weights file missing (test)"
BROKEN_MODEL = f"""\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError({BROKEN_MESSAGE!r})

    def execute(self, requests):
        return []
"""

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_repository(root: Path, model_py: str) -> Path:
    model_dir = root / "add_one"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(ADD_ONE_CONFIG)
    (model_dir / "1" / "model.py").write_text(model_py)
    return root


def listening_addresses(port: int) -> set[str]:
    """IPv4/IPv6 addresses with a socket listening on ``port``, from /proc/net/tcp{,6}."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                addresses.add(address)
    return addresses


def add_one(url: str, x: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("add_one", [tensor], outputs=[grpcclient.InferRequestedOutput("Y")])
        output = result.as_numpy("Y")
        assert output is not None
        return output
    finally:
        client.close()


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Block until process ``pid`` (not necessarily our child) exits; False on timeout."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def add_one_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("repo_add_one"), ADD_ONE_MODEL)


@pytest.fixture(scope="module")
def server(add_one_repo: Path) -> Iterator[EmbeddedTriton]:
    started = time.perf_counter()
    with EmbeddedTriton().start(add_one_repo) as running:
        LOG.info("embedded tritonserver start + ready: %.2f s", time.perf_counter() - started)
        yield running


def test_find_tritonserver_matches_running_python() -> None:
    install = find_tritonserver()
    assert install.binary.is_file()
    assert os.access(install.binary, os.X_OK)
    assert install.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (install.backend_dir / "python" / "libtriton_python.so").is_file()


def test_server_and_model_report_ready(server: EmbeddedTriton) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("add_one")
    finally:
        client.close()


def test_grpc_inference_returns_input_plus_one(server: EmbeddedTriton) -> None:
    x = np.array([[1.0, 2.0, 3.0], [-4.5, 0.0, 1e6]], dtype=np.float32)
    np.testing.assert_array_equal(add_one(server.grpc_url, x), x + 1)


def test_listens_on_loopback_only(server: EmbeddedTriton) -> None:
    # 127.0.0.1 as /proc/net/tcp writes it, and as IPv4-mapped IPv6 (the HTTP server may use a tcp6 socket).
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    for port in (server.ports.http, server.ports.grpc, server.ports.metrics):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on port {port}"
        assert addresses <= loopback, f"port {port} listens on {addresses}"


def test_listens_on_every_interface_when_asked(tmp_path: Path) -> None:
    # The cpu-demo Triton pod of deploy/k8s serves other pods: `python -m gateway.triton.server --address 0.0.0.0`.
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    with EmbeddedTriton().start(repo, address="0.0.0.0") as server:
        for port in (server.ports.http, server.ports.grpc, server.ports.metrics):
            addresses = listening_addresses(port)
            assert addresses & {"00000000", "00000000000000000000000000000000"}, f"port {port}: {addresses}"
        x = np.ones((1, 3), np.float32)
        np.testing.assert_array_equal(add_one(server.grpc_url, x), x + 1)  # still reachable on loopback


def test_second_server_runs_alongside_and_stop_leaves_nothing(
    server: EmbeddedTriton, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    regions_before = set(Path("/dev/shm").glob("lipsync_triton_*"))
    with caplog.at_level(logging.INFO, logger="gateway.triton.server.server"):
        second = EmbeddedTriton().start(repo)
    try:
        assert {second.ports.http, second.ports.grpc}.isdisjoint({server.ports.http, server.ports.grpc})
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        np.testing.assert_array_equal(add_one(second.grpc_url, x), x + 1)
        np.testing.assert_array_equal(add_one(server.grpc_url, x), x + 1)
        # The server's own log lines reach Python logging.
        assert any("successfully loaded 'add_one'" in record.getMessage() for record in caplog.records)

        running = processes_mentioning(str(repo))
        commands = " ".join(cmd for _, cmd in running)
        assert "bin/tritonserver" in commands
        assert "triton_python_backend_stub" in commands
        shm_regions = set(Path("/dev/shm").glob("lipsync_triton_*")) - regions_before
        assert shm_regions, "the stub's shared-memory region should exist while serving"
    finally:
        second.stop()
    second.stop()  # idempotent
    assert second.crash is None  # stopped, not crashed

    assert processes_mentioning(str(repo)) == []
    assert not any(region.exists() for region in shm_regions)
    # The first server is untouched.
    np.testing.assert_array_equal(add_one(server.grpc_url, np.ones((1, 3), np.float32)), np.full((1, 3), 2.0))


def test_a_server_that_crashes_is_reported_with_its_signal_and_last_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    with caplog.at_level(logging.ERROR, logger="gateway.triton.server"):
        with EmbeddedTriton().start(repo) as crashing:
            os.kill(crashing.pid, signal.SIGSEGV)
            assert crashing.wait() == -signal.SIGSEGV
        assert processes_mentioning(str(repo)) == []
    assert crashing.crash is not None
    assert crashing.crash.startswith("tritonserver (pid ") and "exited by itself with signal SIGSEGV" in crashing.crash
    assert "Signal (11) received" in crashing.crash  # its last log lines (here its own backtrace) come with it
    assert any("exited by itself" in record.getMessage() for record in caplog.records)


def test_a_supervised_server_is_restarted_on_its_own_ports_after_a_crash(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    x = np.ones((1, 3), np.float32)
    with EmbeddedTriton().start(repo) as server:
        supervisor = server.supervise(max_restarts=1)
        first, url = server.pid, server.grpc_url
        os.kill(first, signal.SIGSEGV)
        assert server.wait_for_restart(1, timeout_s=120)
        assert server.pid != first and server.grpc_url == url and server.crash is None
        np.testing.assert_array_equal(add_one(url, x), x + 1)  # the same address serves again
        os.kill(server.pid, signal.SIGSEGV)  # a second crash within the window: left down
        supervisor.join(timeout=60)
        assert not supervisor.is_alive() and server.restarts == 1 and not server.is_running()
    assert processes_mentioning(str(repo)) == []


def test_model_failing_in_initialize_fails_start_with_its_message(tmp_path: Path) -> None:
    repo = write_repository(tmp_path / "broken", BROKEN_MODEL)
    launcher = EmbeddedTriton()
    with pytest.raises(TritonStartError) as failure:
        launcher.start(repo, ready_timeout_s=60)
    assert BROKEN_MESSAGE in str(failure.value)
    assert "exited with code" in str(failure.value)
    assert not launcher.is_running()
    assert processes_mentioning(str(repo)) == []


def test_taken_port_fails_start_even_if_another_server_answers_there(server: EmbeddedTriton, tmp_path: Path) -> None:
    """A fixed port already served by another Triton: its READY answer must not pass for ours."""
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    launcher = EmbeddedTriton()
    with pytest.raises(TritonStartError, match="already in use"):
        launcher.start(repo, grpc_port=server.ports.grpc, http_port=0, metrics_port=0)
    assert processes_mentioning(str(repo)) == []


def _as_from_a_terminal() -> None:
    """In the child: SIGINT as a terminal delivers it. A test run started in the background (`make test &`)
    inherits SIGINT ignored, and an ignored SIGINT is rightly left ignored by the CLI."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_stops_server_and_stubs_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    cli = subprocess.Popen(
        [sys.executable, "-m", "gateway.triton.server", str(repo)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_from_a_terminal,
    )
    try:
        assert cli.stderr is not None
        lines = []
        for line in cli.stderr:  # the CLI exits (closing the pipe) if the server fails, so this ends
            lines.append(line)
            if "serving: grpc" in line:
                break
        assert "serving: grpc" in lines[-1], "".join(lines[-30:])
        url = lines[-1].split("serving: grpc ")[1].split(",")[0]
        np.testing.assert_array_equal(add_one(url, np.zeros((1, 3), np.float32)), np.ones((1, 3)))
        started = processes_mentioning(str(repo))
        assert len(started) >= 3  # the CLI, tritonserver and one stub

        cli.send_signal(signum)
        cli.communicate(timeout=60)  # drains stderr until the CLI exits
        assert cli.returncode == 128 + signum
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if cli.stderr is not None:
            cli.stderr.close()
    assert processes_mentioning(str(repo)) == []


def test_server_exits_when_launcher_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no chance for cleanup code: the kernel's parent-death signal stops the server instead."""
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    cli = subprocess.Popen(
        [sys.executable, "-m", "gateway.triton.server", str(repo)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stderr is not None
        for line in cli.stderr:
            if "serving: grpc" in line:
                break
        children = [pid for pid, _ in processes_mentioning(str(repo)) if pid != cli.pid]
        assert len(children) >= 2  # tritonserver and one stub
        cli.kill()
        cli.wait()
        for pid in children:
            assert wait_for_exit(pid, timeout_s=60), f"process {pid} outlived the killed launcher"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if cli.stderr is not None:
            cli.stderr.close()
    assert processes_mentioning(str(repo)) == []


def test_admin_apis_can_be_put_behind_a_key(tmp_path: Path) -> None:
    """The cpu-demo Triton pod (`--admin-key-env`): inference, health and metadata stay open; statistics, the
    model repository, shared memory, trace and logging need the key."""
    from tritonclient.utils import InferenceServerException

    from gateway.triton.server import ADMIN_KEY_HEADER, restricted_api_args

    key = "admin-key-for-this-test"
    grpc_header = f"triton-grpc-protocol-{ADMIN_KEY_HEADER}"  # Triton's prefix for a restricted gRPC protocol's header
    repo = write_repository(tmp_path / "repo", ADD_ONE_MODEL)
    with EmbeddedTriton().start(repo, extra_args=restricted_api_args(key)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            assert client.is_server_ready() and client.get_model_metadata("add_one").name == "add_one"
            np.testing.assert_array_equal(add_one(server.grpc_url, np.ones((1, 3), np.float32)), 2)
            for call in (client.get_inference_statistics, client.get_model_repository_index):
                with pytest.raises(InferenceServerException, match="restricted"):
                    call()
                call(headers={grpc_header: key})
            with pytest.raises(InferenceServerException, match="restricted"):
                client.get_inference_statistics(headers={grpc_header: "wrong"})
        finally:
            client.close()
