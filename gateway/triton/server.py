"""Run the real ``tritonserver`` that ships inside the ``nvidia-pytriton`` wheel as a child process.

The wheel carries Triton 2.51 with the Python backend only; we use it purely as the place the binary lives
and never import pytriton itself. ``EmbeddedTriton`` prepares a private backend directory holding the
Python-backend stub built for the running interpreter, starts the server on loopback ports in its own process
group, forwards its log lines to :mod:`logging`, waits until the server is ready, and on stop terminates the
whole group so the stub processes die with it.

Run it from a shell: ``python -m gateway.triton.server MODEL_REPOSITORY`` (Ctrl-C stops server and stubs);
``--address 0.0.0.0`` serves other hosts (the cpu-demo Triton pod of deploy/k8s).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import ctypes
import functools
import importlib.util
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Literal, Self

LOG = logging.getLogger(__name__)
# Server output goes to its own logger so applications can silence or redirect it separately.
SERVER_LOG = logging.getLogger(f"{__name__}.server")

LOOPBACK = "127.0.0.1"
ModelControlMode = Literal["none", "explicit", "poll"]

# The wheel's server is a CUDA build: on a CPU-only host it reports these at every start. They are expected
# here, so they go to DEBUG instead of alarming the reader at ERROR/WARNING level.
_CPU_HOST_NOISE = (
    "CudaDriverHelper has not been initialized",
    "Unable to allocate pinned system memory",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "CUDA memory pool disabled",
    "failed to allocate pinned system memory",
    "CUDA driver version is insufficient",  # ensembles try to create CUDA streams even on CPU hosts
)
_SEVERITY = re.compile(r"^([IWEF])\d{4} ")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_PORT_IN_USE = re.compile(r"already in use|Address in use|failed to start .* service", re.IGNORECASE)
_SHM_DIR = Path("/dev/shm")
# Names of our temporary backend dirs and shared-memory regions carry the launcher's pid (see _launch).
_WORKDIR_PREFIX = "lipsync-triton-"
_SHM_PREFIX = "lipsync_triton_"
_PR_SET_PDEATHSIG = 1


class TritonNotInstalledError(RuntimeError):
    """The ``nvidia-pytriton`` wheel (our source of the tritonserver binary) is missing or incomplete."""


class TritonStartError(RuntimeError):
    """The server exited, or did not become ready in time; the message carries its last log lines."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of the wheel's tritonserver are on disk."""

    binary: Path
    backend_dir: Path  # holds python/libtriton_python.so and python/triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for the running Python's major.minor
    lib_dirs: tuple[Path, ...]  # must be on LD_LIBRARY_PATH for the server and the stub


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int


def find_tritonserver() -> TritonInstall:
    """Locate tritonserver, its Python backend and the stub for this interpreter inside ``nvidia-pytriton``."""
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise TritonNotInstalledError(
            "the embedded Triton server needs the nvidia-pytriton wheel, which carries the tritonserver binary: "
            "pip install 'nvidia-pytriton==0.7.0' (or the project's 'embedded' extra)"
        )
    package = Path(spec.origin).parent
    dist = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        backend_dir=dist / "backends",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        lib_dirs=(package.parent / "nvidia_pytriton.libs", *_libpython_dirs()),
    )
    required = [install.binary, install.backend_dir / "python" / "libtriton_python.so", install.lib_dirs[0]]
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        raise TritonNotInstalledError(f"nvidia-pytriton at {package} is incomplete; missing: {', '.join(missing)}")
    if not install.stub.exists():
        available = sorted(p.name for p in (dist / "python_backend_stubs").iterdir() if p.is_dir())
        raise TritonNotInstalledError(
            f"no Python-backend stub for Python {version} in {package} (available: {', '.join(available)}); "
            "the stub embeds the interpreter, so it must match the running Python's major.minor version"
        )
    return install


def _libpython_dirs() -> tuple[Path, ...]:
    """The directory of this interpreter's libpython, so the stub embeds the same build we run (e.g. pyenv)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return ()
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).exists():
        return (Path(libdir),)
    return ()


def free_loopback_ports(count: int) -> list[int]:
    """Ports the OS reports free on 127.0.0.1 right now (all held open together, so they are distinct)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class EmbeddedTriton:
    """One tritonserver child process on loopback ports; a context manager.

    >>> with EmbeddedTriton().start(Path("model_repository")) as server:
    ...     client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    """

    def __init__(self, install: TritonInstall | None = None) -> None:
        self.install = install if install is not None else find_tritonserver()
        self._process: subprocess.Popen[str] | None = None
        self._ports: TritonPorts | None = None
        self._workdir: Path | None = None
        self._shm_prefix = ""
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=25)
        self._error_lines: collections.deque[str] = collections.deque(maxlen=20)
        self._lock = threading.RLock()  # stop() may come from atexit, a failed start and other threads at once
        self._serving = False  # ready, and not being stopped: an exit now is a crash
        self.crash: str | None = None  # how the server ended if it ended by itself after it was ready
        self._start_again: Callable[..., Self] | None = None  # start() with this start's options, for restarts
        self._supervisor: threading.Thread | None = None
        self.restarts = 0
        self._restarted = threading.Condition()

    # ----------------------------------------------------------------- start
    def start(
        self,
        model_repository: Path,
        *,
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        address: str = LOOPBACK,
        log_verbose: int = 0,
        model_control_mode: ModelControlMode = "none",
        load_models: Sequence[str] = (),
        auto_complete_config: bool = True,
        ready_timeout_s: float = 120.0,
        exit_timeout_s: int = 10,
        extra_args: Sequence[str] = (),
    ) -> Self:
        """Start the server and return once it reports ready (strict readiness: every model loaded).

        A port of 0 means a free loopback port. ``address`` is where the server listens: loopback unless asked
        (``0.0.0.0`` in a container whose server other pods call, as deploy/k8s's cpu-demo does).
        ``load_models`` applies to ``model_control_mode="explicit"``.
        ``exit_timeout_s`` is how long Triton waits for in-flight requests on SIGTERM.
        ``auto_complete_config=False`` suits generated, complete configs: the Python backend then skips the extra
        stub it launches per model just to complete the config (≈1 s per model on this kind of CPU).
        Raises TritonStartError (with the server's last log lines) if it exits or is not ready in time.
        """
        with self._lock:
            if self._process is not None:
                raise RuntimeError(f"tritonserver is already running (pid {self._process.pid})")
        self._start_again = functools.partial(
            self.start,
            model_repository,
            address=address,
            log_verbose=log_verbose,
            model_control_mode=model_control_mode,
            load_models=load_models,
            auto_complete_config=auto_complete_config,
            ready_timeout_s=ready_timeout_s,
            exit_timeout_s=exit_timeout_s,
            extra_args=extra_args,
        )
        repository = Path(model_repository).resolve()
        if not repository.is_dir():
            raise FileNotFoundError(f"model repository {repository} is not a directory")
        auto_ports = http_port == grpc_port == metrics_port == 0
        options = [
            f"--model-control-mode={model_control_mode}",
            *(f"--load-model={name}" for name in load_models),
            f"--log-verbose={log_verbose}",
            f"--exit-timeout-secs={exit_timeout_s}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            *([] if auto_complete_config else ["--disable-auto-complete-config"]),
            *extra_args,
        ]
        # A free port can be taken by someone else before the server binds it; then pick new ones.
        attempts = 3 if auto_ports else 1
        try:
            for attempt in range(1, attempts + 1):
                free = iter(free_loopback_ports(3))
                ports = TritonPorts(
                    http=http_port or next(free), grpc=grpc_port or next(free), metrics=metrics_port or next(free)
                )
                try:
                    self._launch(repository, ports, address, options)
                    self._wait_until_ready(ready_timeout_s)
                    return self
                except TritonStartError as error:
                    if attempt == attempts or not _PORT_IN_USE.search(str(error)):
                        raise
                    LOG.warning("tritonserver could not bind its ports (%s); retrying with other ports", ports)
        except BaseException:
            self.stop()  # also on Ctrl-C while waiting: never leave a half-started server behind
            raise
        raise AssertionError("unreachable")

    def _launch(self, repository: Path, ports: TritonPorts, address: str, options: list[str]) -> None:
        _remove_leftovers_of_dead_launchers()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        backend_dir = self._prepare_backends(self._workdir)
        # Unique per server: the stubs' shared-memory regions are named from it, so two servers never collide
        # and we can remove exactly our regions if the server was killed before it could.
        self._shm_prefix = f"{_SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        command = [
            str(self.install.binary),
            f"--model-repository={repository}",
            f"--backend-directory={backend_dir}",
            f"--http-address={address}",
            f"--http-port={ports.http}",
            f"--grpc-address={address}",
            f"--grpc-port={ports.grpc}",
            f"--metrics-address={address}",
            f"--metrics-port={ports.metrics}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            *options,
        ]
        LOG.info("starting tritonserver on %s (http %d, grpc %d)", repository, ports.http, ports.grpc)
        LOG.debug("command: %s", " ".join(command))
        self._tail.clear()
        self._error_lines.clear()
        self.crash = None
        self._process = subprocess.Popen(
            command,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # own process group: stop() signals server and stubs together
            # The main thread lives as long as the process; the supervisor as long as the server it restarts.
            preexec_fn=_die_with_parent_thread()
            if threading.current_thread() in (threading.main_thread(), self._supervisor)
            else None,
        )
        self._ports = ports
        atexit.register(self.stop)
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._forward_logs, args=(self._process, self._process.stdout), name="tritonserver-log", daemon=True
        )
        self._reader.start()

    def _prepare_backends(self, workdir: Path) -> Path:
        """A backend directory whose python/ holds the wheel's backend plus the stub for this Python.

        The Python backend runs ``<backend-directory>/python/triton_python_backend_stub``; the wheel keeps one
        stub per Python version elsewhere, so we link the matching one in (symlinks: nothing is copied).
        """
        python_dir = workdir / "backends" / "python"
        python_dir.mkdir(parents=True)
        for item in (self.install.backend_dir / "python").iterdir():
            if item.name != "__pycache__":
                (python_dir / item.name).symlink_to(item)
        (python_dir / "triton_python_backend_stub").symlink_to(self.install.stub)
        return python_dir.parent

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(path) for path in self.install.lib_dirs]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
        # The stub embeds the interpreter, which finds its prefix by looking up `python3` on PATH: putting this
        # environment's bin/ first makes the stub use our virtualenv (numpy, onnxruntime) rather than the system.
        env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", os.defpath)])
        return env

    def _forward_logs(self, process: subprocess.Popen[str], stream: IO[str]) -> None:
        level = logging.INFO
        for raw in stream:
            line = raw.rstrip("\n")
            severity = _SEVERITY.match(line)
            if severity:
                level = _LEVELS[severity.group(1)]
            noise = any(text in line for text in _CPU_HOST_NOISE)
            if not noise and ((level >= logging.ERROR and severity) or line.startswith("error:")):
                self._error_lines.append(line)  # "error: creating server: ..." is how a failed start ends
            self._tail.append(line)
            SERVER_LOG.log(logging.DEBUG if noise else level, "%s", line)
        # The log ends when the server does. If nobody was stopping it, it crashed: say so where people look.
        code = process.wait()
        if self._serving:
            self._serving = False
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
            self.crash = self._with_logs(f"tritonserver (pid {process.pid}) exited by itself with {how}")
            LOG.error("%s", self.crash)

    def _wait_until_ready(self, timeout_s: float) -> None:
        import tritonclient.grpc  # imported late: only needed while starting

        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        started = time.monotonic()
        client = tritonclient.grpc.InferenceServerClient(self.grpc_url)
        try:
            while True:
                with contextlib.suppress(Exception):  # refused / unavailable until the server listens
                    # The port check makes sure the answer came from our server, not one that took the port first.
                    if client.is_server_ready(client_timeout=2.0) and _listens_on(self._process.pid, self.ports.grpc):
                        LOG.info("tritonserver ready in %.1f s (grpc %s)", time.monotonic() - started, self.grpc_url)
                        self._serving = True
                        return
                try:
                    # The pause between polls; returns at once if the server dies meanwhile.
                    code = self._process.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        message = f"tritonserver was not ready after {timeout_s:.0f} s"
                        self.stop()
                        raise TritonStartError(self._with_logs(message)) from None
                    continue
                self.stop()  # reaps, removes leftovers, joins the log reader so the tail is complete
                raise TritonStartError(self._with_logs(f"tritonserver exited with code {code} before it was ready"))
        finally:
            client.close()

    def _with_logs(self, message: str) -> str:
        parts = [message]
        if self._error_lines:
            parts += ["errors reported by tritonserver:", *self._error_lines]
        parts += [f"last log lines (all of them went to the {SERVER_LOG.name!r} logger):", *self._tail]
        return "\n".join(parts)

    # ------------------------------------------------------------ properties
    @property
    def ports(self) -> TritonPorts:
        if self._ports is None:
            raise RuntimeError("tritonserver has not been started")
        return self._ports

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient.grpc expects it."""
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """``host:port`` as tritonclient.http expects it."""
        return f"{LOOPBACK}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process-group id (the stubs share the group)."""
        if self._process is None:
            raise RuntimeError("tritonserver is not running")
        return self._process.pid

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        """Block until the server exits by itself; return its exit code."""
        if self._process is None:
            raise RuntimeError("tritonserver is not running")
        return self._process.wait()

    # ------------------------------------------------------------- supervise
    def supervise(self, max_restarts: int = 3, window_s: float = 600.0) -> threading.Thread:
        """Restart the server on its own ports whenever it crashes, at most ``max_restarts`` times in any
        ``window_s`` seconds (a server that keeps crashing is left down, and says why in the log).

        For ``gateway up``: one crash of the embedded server (see :attr:`crash`) must not leave the gateway
        answering "unreachable" until someone restarts it by hand; the gateway's client reconnects by itself.
        Returns the supervising thread, which ends when the server is stopped or left down.
        """
        if self._supervisor is not None:
            return self._supervisor
        self._supervisor = threading.Thread(
            target=self._keep_serving, args=(max_restarts, window_s), name="tritonserver-supervisor", daemon=True
        )
        self._supervisor.start()
        return self._supervisor

    def _keep_serving(self, max_restarts: int, window_s: float) -> None:
        recent: collections.deque[float] = collections.deque()
        while True:
            with self._lock:
                process = self._process
            if process is None:
                return
            process.wait()
            self.stop()  # reaps the stubs and the log reader, which records the crash (if it was one)
            if self.crash is None or self._start_again is None:
                return  # stopped on purpose
            now = time.monotonic()
            while recent and now - recent[0] > window_s:
                recent.popleft()
            if len(recent) >= max_restarts:
                LOG.error("tritonserver crashed %d times in %.0f s: leaving it down", len(recent) + 1, window_s)
                return
            recent.append(now)
            ports = self.ports
            LOG.warning("restarting tritonserver on the same ports (grpc %d) after its crash", ports.grpc)
            try:
                self._start_again(http_port=ports.http, grpc_port=ports.grpc, metrics_port=ports.metrics)
            except TritonStartError as error:
                LOG.error("tritonserver could not be restarted: %s", error)
                return
            with self._restarted:
                self.restarts += 1
                self._restarted.notify_all()

    def wait_for_restart(self, count: int, timeout_s: float) -> bool:
        """Whether the server has been restarted ``count`` times by :meth:`supervise` (waiting ``timeout_s``)."""
        with self._restarted:
            return self._restarted.wait_for(lambda: self.restarts >= count, timeout=timeout_s)

    # ------------------------------------------------------------------ stop
    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after ``timeout_s``); idempotent.

        State is cleared only at the end, so a stop cut short (a second Ctrl-C) is finished by the atexit hook.
        """
        with self._lock:
            process = self._process
            if process is None or process.poll() is None:
                self._serving = False  # its exit from here on is ours, not a crash
            if process is not None:
                pgid = process.pid
                if process.poll() is None:
                    LOG.info("stopping tritonserver (pid %d)", pgid)
                    _signal_group(pgid, signal.SIGTERM)
                    try:
                        process.wait(timeout=timeout_s)
                    except subprocess.TimeoutExpired:
                        LOG.warning("tritonserver did not exit within %.0f s; killing its process group", timeout_s)
                        _signal_group(pgid, signal.SIGKILL)
                        process.wait()
                # Stubs normally exit with the server; any that linger (server crashed or was killed) go now.
                if process_group_members(pgid):
                    _signal_group(pgid, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout=5.0)
                self._reader = None
            if process is not None and process.stdout is not None:
                process.stdout.close()  # the log pipe: its reader has seen the end of it
            if self._shm_prefix:
                for region in _SHM_DIR.glob(f"{self._shm_prefix}*"):
                    region.unlink(missing_ok=True)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            self._process = None
            atexit.unregister(self.stop)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def exit_on_signals(signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM)) -> None:
    """For CLIs (main thread only): turn these signals into exceptions, so ``finally``/``with``/atexit stop servers.

    Each server runs in its own process group, so a terminal's Ctrl-C reaches only us and we must pass it on.
    Stopping in ordinary code rather than inside the handler keeps the handler from racing a stop() in progress.
    Signals that already have a handler (e.g. uvicorn's) are left alone; their owner shuts down cleanly.
    """
    for signum in signals:
        current = signal.getsignal(signum)
        if signum == signal.SIGINT and current in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, signal.default_int_handler)  # KeyboardInterrupt
        elif current == signal.SIG_DFL:
            signal.signal(signum, _raise_system_exit)


def _raise_system_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _remove_leftovers_of_dead_launchers() -> None:
    """Delete backend dirs and shared-memory regions left by launchers that were killed (SIGKILL skips stop())."""
    leftovers = [
        *Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"),
        *(_SHM_DIR.glob(f"{_SHM_PREFIX}*_*") if _SHM_DIR.is_dir() else []),
    ]
    for path in leftovers:
        pid = path.name.removeprefix(_WORKDIR_PREFIX).removeprefix(_SHM_PREFIX).replace("_", "-").split("-")[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        LOG.debug("removing %s, left by launcher %s which no longer runs", path, pid)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (socket inodes in /proc/net vs its fds)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(fields[9])
    fds = Path(f"/proc/{pid}/fd")
    return any(os.readlink(fds / fd).removeprefix("socket:[").removesuffix("]") in inodes for fd in os.listdir(fds))


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _die_with_parent_thread() -> Callable[[], None]:
    """preexec_fn: the kernel sends SIGTERM to the server when the thread that started it dies.

    Only used from the main thread, whose end is the end of the process; from a worker thread the server would
    die with that thread. libc is loaded here, in the parent, so the child only makes one system call.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_pdeathsig


# Triton's APIs the gateway never calls (it infers, checks health and reads metadata and model configs): behind a
# key, a pod that can reach the server cannot register shared memory, load models, read statistics, or change
# tracing and logging.
ADMIN_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
ADMIN_KEY_HEADER = "triton-admin-key"


def restricted_api_args(key: str) -> list[str]:
    """tritonserver options that put :data:`ADMIN_APIS` behind the header ``triton-admin-key: key``."""
    if not key:
        raise ValueError("the admin key is empty")
    apis = ",".join(ADMIN_APIS)
    return [
        f"--grpc-restricted-protocol={apis}:{ADMIN_KEY_HEADER}={key}",
        f"--http-restricted-api={apis}:{ADMIN_KEY_HEADER}={key}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.triton.server", description=__doc__.splitlines()[0])
    parser.add_argument("model_repository", type=Path)
    parser.add_argument("--http-port", type=int, default=0, help="0 = a free loopback port")
    parser.add_argument("--grpc-port", type=int, default=0, help="0 = a free loopback port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 = a free loopback port")
    parser.add_argument("--address", default=LOOPBACK, help="where to listen (0.0.0.0: every interface)")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--ready-timeout-s", type=float, default=120.0, help="seconds to wait for every model")
    parser.add_argument(
        "--admin-key-env",
        metavar="NAME",
        help=f"restrict {', '.join(ADMIN_APIS)} to requests whose `{ADMIN_KEY_HEADER}` header is the key in this "
        "environment variable (not on the command line, which other processes can read)",
    )
    args = parser.parse_args(argv)
    extra_args: list[str] = []
    if args.admin_key_env is not None:
        key = os.environ.get(args.admin_key_env, "")
        if not key:
            parser.error(f"--admin-key-env: the environment variable {args.admin_key_env} is unset or empty")
        extra_args = restricted_api_args(key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    exit_on_signals()
    server = EmbeddedTriton()
    try:
        server.start(
            args.model_repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            address=args.address,
            log_verbose=args.log_verbose,
            ready_timeout_s=args.ready_timeout_s,
            extra_args=extra_args,
        )
        LOG.info("serving: grpc %s, http %s, pid %d", server.grpc_url, server.http_url, server.pid)
        code = server.wait()
        LOG.error("tritonserver exited by itself with code %d", code)
        return code or 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
