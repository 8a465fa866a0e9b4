"""Every Triton call goes through here: one or many endpoints, health, balancing, one retry, metrics.

``LIPSYNC_TRITON_URL`` names the servers: ``host:port``, a comma-separated list of them, or
``dns://name:port`` — every address ``name`` resolves to, re-resolved periodically (a Kubernetes headless
Service). Every Triton model is stateless, so any call may go to any server:

- a call goes to the **healthy endpoint with the fewest calls in flight**;
- a background check asks each endpoint for its readiness and takes it **out and back in** automatically;
- a call that fails because its endpoint went away (connection refused or lost, server shutting down) is
  **retried once on another endpoint** — the answer is the same function of the same inputs, so a session's
  frames are exactly those a single healthy server would have produced;
- a call a server refuses because the model's queue is full (its bound is in the repository's configs) is
  reported as ``InferenceBusy`` (code ``busy``), neither retried nor held against the endpoint: the server is
  alive, only at capacity, and sending the overflow elsewhere at once would only pass the flood along;
- any other failure (a model error, a deadline) is reported as it is: retrying would not change it.

Errors reach callers as ``InferenceUnavailable`` (or its ``InferenceBusy``), with a message for people.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.errors import InferenceBusy, InferenceUnavailable
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# gRPC channel options. Passing any replaces tritonclient's defaults, so the message limits are restated.
# The reconnect backoff is capped at one second: after a Triton restart the gateway serves again at once
# instead of waiting out gRPC's default exponential backoff (up to two minutes).
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
DNS_SCHEME = "dns://"
# What an endpoint that went away says (gRPC status, or words of the message): worth one try elsewhere.
_GONE_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
_GONE_WORDS = ("connection refused", "connection reset", "socket closed", "shutting down", "server is stopping")
# What Triton (2.51) answers when a dynamic batcher's queue is at its max_queue_size: gRPC UNAVAILABLE, the same
# status as a server that went away, with the words "[request id: …] Exceeds maximum queue size" (prefixed by
# "in ensemble 'NAME', " when an ensemble's step was refused). Checked before the gone rule.
_QUEUE_FULL_WORDS = "exceeds maximum queue size"
# How long closing the client waits for abandoned calls to end before it closes their channel anyway.
_SETTLE_TIMEOUT_S = 10.0


class EndpointGone(Exception):
    """The endpoint is not there any more (a retry elsewhere may succeed)."""


def parse_targets(url: str) -> tuple[list[str], str | None]:
    """``a:1,b:2`` → (["a:1", "b:2"], None); ``dns://name:port`` → ([], "name:port")."""
    url = url.strip()
    if url.startswith(DNS_SCHEME):
        name = url.removeprefix(DNS_SCHEME)
        host, _, port = name.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a DNS target is dns://NAME:PORT, got {url!r}")
        return [], name
    targets = [part.strip() for part in url.split(",") if part.strip()]
    if not targets:
        raise ValueError(f"no Triton endpoint in {url!r}")
    for target in targets:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Triton endpoint is HOST:PORT, got {target!r}")
    return targets, None


async def resolve(name: str) -> list[str]:
    """Every address (IPv4 and IPv6) a ``host:port`` resolves to, as ``address:port``."""
    host, _, port = name.rpartition(":")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = []
    for family, _, _, _, sockaddr in infos:
        address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass
class Endpoint:
    """One Triton server: its client, whether it answered its last health check, its calls in flight."""

    url: str
    client: InferenceServerClient
    healthy: bool = True  # until a check or a call says otherwise
    in_flight: int = 0
    reason: str = "not checked yet"
    # Calls whose caller stopped waiting (an interrupt, a session that ended), left to finish on the server.
    abandoned: set[asyncio.Future[InferResult]] = field(default_factory=set)

    async def infer(
        self, model: str, request: list[InferInput], wanted: list[str], timeout_s: float
    ) -> dict[str, np.ndarray]:
        # The call is never cancelled from here: Triton 2.51 can crash (SIGSEGV) when a gRPC call is cancelled
        # as its answer completes (triton-inference-server/server#7368, fixed in 24.12), and that one crash would
        # end every session on the server. A caller that stops waiting abandons the call instead; it ends
        # within its deadline and its answer is dropped.
        call = asyncio.ensure_future(
            self.client.infer(
                model, request, outputs=[InferRequestedOutput(name) for name in wanted], client_timeout=timeout_s
            )
        )
        try:
            result = await asyncio.shield(call)
        except asyncio.CancelledError:
            if not call.done():
                self.abandoned.add(call)
                call.add_done_callback(self._settled)
            raise
        except InferenceServerException as err:
            text = f"{err.status()} {err.message() or err}".lower()
            if _QUEUE_FULL_WORDS in text:
                raise InferenceBusy(model) from err
            if err.status() in _GONE_STATUSES or any(word in text for word in _GONE_WORDS):
                raise EndpointGone(err.message() or str(err)) from err
            if err.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise InferenceUnavailable(
                    f"The inference server did not finish {model!r} within {timeout_s:g} s; it is overloaded or too "
                    "slow for these models (LIPSYNC_TRITON_TIMEOUT_S raises the limit). The session stopped."
                ) from err
            raise InferenceUnavailable(
                f"The inference server could not run {model!r}: {err.message() or err}. "
                "The session stopped; try again in a moment."
            ) from err
        answer = {}
        for name in wanted:
            array = result.as_numpy(name)
            if array is None:
                raise InferenceUnavailable(f"The inference server's answer from {model!r} has no {name!r}.")
            answer[name] = array
        return answer

    def _settled(self, call: asyncio.Future[InferResult]) -> None:
        self.abandoned.discard(call)
        if not call.cancelled() and call.exception() is not None:
            log.debug("an abandoned call to %s ended with: %s", self.url, call.exception())

    async def settle(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the abandoned calls to end, so that closing cancels none of them."""
        if self.abandoned:
            await asyncio.wait(set(self.abandoned), timeout=timeout_s)

    async def check(self) -> None:
        try:
            self.healthy = await self.client.is_server_ready(client_timeout=2.0)
            self.reason = "ready" if self.healthy else "not ready"
        except InferenceServerException as err:
            self.healthy, self.reason = False, f"unreachable ({err.message() or err})"


@dataclass
class TritonClient:
    """Async gRPC client for the Triton servers of ``url`` (see the module's docstring)."""

    url: str
    timeout_s: float
    metrics: Metrics
    health_interval_s: float = 2.0
    dns_refresh_s: float = 10.0
    _endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _dns_name: str | None = None
    _frame_limits: dict[str, int] = field(default_factory=dict)
    _watcher: asyncio.Task[None] | None = None
    _resolved_at: float = -1e9

    def __post_init__(self) -> None:
        targets, self._dns_name = parse_targets(self.url)
        for target in targets:
            self._add(target)

    # --------------------------------------------------------------------------------------- endpoints

    def _add(self, url: str) -> None:
        self._endpoints[url] = Endpoint(url, InferenceServerClient(url, channel_args=_CHANNEL_ARGS))

    async def _refresh(self) -> None:
        """Resolve the DNS name again: new addresses join, vanished ones leave (their calls finish first)."""
        if self._dns_name is None:
            return
        try:
            addresses = await resolve(self._dns_name)
        except OSError as err:
            log.warning("could not resolve %s: %s; keeping %s", self._dns_name, err, sorted(self._endpoints))
            return
        for address in addresses:
            if address not in self._endpoints:
                log.info("Triton endpoint %s joined (%s)", address, self._dns_name)
                self._add(address)
        for address in [a for a in self._endpoints if a not in addresses]:
            endpoint = self._endpoints[address]
            if endpoint.in_flight == 0 and not endpoint.abandoned:
                log.info("Triton endpoint %s left (%s)", address, self._dns_name)
                del self._endpoints[address]
                await endpoint.client.close()
                self.metrics.triton_endpoint_healthy.remove(address)

    async def check(self) -> None:
        """One round: re-resolve (when due) and ask every endpoint whether it is ready."""
        now = time.monotonic()
        if self._dns_name is not None and now - self._resolved_at >= self.dns_refresh_s:
            self._resolved_at = now
            await self._refresh()
        endpoints = list(self._endpoints.values())
        await asyncio.gather(*(endpoint.check() for endpoint in endpoints))
        for endpoint in endpoints:
            self.metrics.triton_endpoint_healthy.labels(endpoint.url).set(1 if endpoint.healthy else 0)

    async def start(self) -> None:
        """First check, then keep checking in the background (until :meth:`close`)."""
        await self.check()
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self.check()
            except Exception:  # a failed round must not end the watching
                log.exception("Triton health check failed")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for endpoint in self._endpoints.values():
            await endpoint.settle(timeout_s=_SETTLE_TIMEOUT_S)
            await endpoint.client.close()

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def _pick(self, exclude: set[str]) -> Endpoint | None:
        candidates = [e for e in self._endpoints.values() if e.url not in exclude]
        healthy = [e for e in candidates if e.healthy] or candidates  # all down: try anyway (they may be back)
        return min(healthy, key=lambda e: e.in_flight, default=None)

    # ------------------------------------------------------------------------------------------- calls

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str]
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return the named outputs.

        Raises InferenceBusy when the server's queue for ``model`` is full, else InferenceUnavailable."""
        request = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        wanted = list(outputs)
        tried: set[str] = set()
        while True:
            endpoint = self._pick(exclude=tried)
            if endpoint is None or len(tried) >= 2:
                where = ", ".join(sorted(tried)) or self.url
                raise InferenceUnavailable(
                    f"No inference server could run {model!r} (tried {where}). The session stopped; "
                    "try again in a moment."
                )
            tried.add(endpoint.url)
            started = time.perf_counter()
            endpoint.in_flight += 1
            self.metrics.triton_endpoint_in_flight.labels(endpoint.url).inc()
            try:
                answer = await endpoint.infer(model, request, wanted, self.timeout_s)
            except EndpointGone as gone:
                endpoint.healthy, endpoint.reason = False, f"went away ({gone})"
                self.metrics.triton_endpoint_calls.labels(endpoint.url, "gone").inc()
                log.warning("Triton endpoint %s went away during %s (%s): trying another", endpoint.url, model, gone)
                continue
            except InferenceBusy:
                self.metrics.triton_endpoint_calls.labels(endpoint.url, "busy").inc()
                raise
            except InferenceUnavailable:
                self.metrics.triton_endpoint_calls.labels(endpoint.url, "error").inc()
                raise
            finally:
                endpoint.in_flight -= 1
                self.metrics.triton_endpoint_in_flight.labels(endpoint.url).dec()
                elapsed = time.perf_counter() - started
                self.metrics.triton_latency.labels(model).observe(elapsed)
                self.metrics.triton_endpoint_latency.labels(endpoint.url).observe(elapsed)
            self.metrics.triton_endpoint_calls.labels(endpoint.url, "ok").inc()
            if len(tried) > 1:
                self.metrics.triton_retries.inc()
            return answer

    async def _ask(self, question: str, models: Iterable[str]) -> tuple[Endpoint, list[str]] | None:
        """The first reachable endpoint (healthy ones first) and the models it does not have ready."""
        ordered = sorted(self._endpoints.values(), key=lambda e: not e.healthy)
        for endpoint in ordered:
            try:
                missing = [m for m in models if not await endpoint.client.is_model_ready(m, client_timeout=5.0)]
            except InferenceServerException as err:
                endpoint.healthy, endpoint.reason = False, f"unreachable ({err.message() or err})"
                continue
            return endpoint, missing
        log.info("no Triton endpoint answered (%s)", question)
        return None

    async def missing(self, models: Iterable[str]) -> list[str]:
        """The models among ``models`` that the servers do not have ready; InferenceUnavailable if none answers."""
        wanted = list(models)
        answer = await self._ask("missing models", wanted)
        if answer is None:
            raise InferenceUnavailable(f"The inference server at {self.url} is unreachable; try again in a moment.")
        return answer[1]

    async def frame_limit(self, model: str) -> int:
        """The most frames one request to ``model`` may carry: its max_batch_size, or for an ensemble without a
        batch axis the smallest of its steps' (asked once, from the server's own config)."""
        if model not in self._frame_limits:
            endpoint = self._pick(exclude=set())
            if endpoint is None:
                raise InferenceUnavailable(f"No inference server to describe {model!r}.")
            try:
                config = (await endpoint.client.get_model_config(model, as_json=True, client_timeout=10.0))["config"]
            except InferenceServerException as err:
                raise InferenceUnavailable(
                    f"The inference server could not describe {model!r}: {err.message() or err}."
                ) from err
            limit = int(config.get("max_batch_size", 0))
            if limit == 0 and config.get("platform") == "ensemble":
                limits = [await self.frame_limit(step["model_name"]) for step in config["ensemble_scheduling"]["step"]]
                limit = min((n for n in limits if n > 0), default=0)
            self._frame_limits[model] = limit
        return self._frame_limits[model]

    async def ready(self, models: Iterable[str]) -> tuple[bool, str]:
        """Ready while at least one endpoint is up with every model in ``models``; and why, in words."""
        wanted = list(models)
        states = []
        for endpoint in list(self._endpoints.values()):
            try:
                if not await endpoint.client.is_server_ready(client_timeout=2.0):
                    states.append((endpoint.url, "the server is not ready"))
                    continue
                missing = [m for m in wanted if not await endpoint.client.is_model_ready(m, client_timeout=2.0)]
            except InferenceServerException as err:
                states.append((endpoint.url, f"unreachable ({err.message() or err})"))
                continue
            states.append((endpoint.url, f"model {missing[0]!r} is not ready" if missing else "ready"))
        ready = [url for url, state in states if state == "ready"]
        if ready:
            return True, f"ready ({len(ready)} of {len(states)} inference servers)"
        if not states:
            return False, f"no inference server found for {self.url}"
        if len(states) == 1:
            url, state = states[0]
            reason = state if state.startswith(("model", "the server")) else f"the inference server at {url} is {state}"
            return False, reason
        return False, "no inference server is ready: " + "; ".join(f"{url}: {state}" for url, state in states)
