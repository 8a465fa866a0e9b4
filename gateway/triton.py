"""The one wrapper every Triton call goes through: timeout, error check, metrics, one exception type."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.errors import InferenceUnavailable
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


class TritonClient:
    """Async gRPC client for one Triton server (``host:port``)."""

    def __init__(self, url: str, *, timeout_s: float, metrics: Metrics) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._client = InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self._frame_limits: dict[str, int] = {}

    async def close(self) -> None:
        await self._client.close()

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Iterable[str]
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on named numpy inputs; return the named outputs. Raises InferenceUnavailable."""
        request = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        wanted = list(outputs)
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                model,
                request,
                outputs=[InferRequestedOutput(name) for name in wanted],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as err:
            log.warning("Triton call to %s failed: %s", model, err)
            if err.status() == "StatusCode.DEADLINE_EXCEEDED":
                raise InferenceUnavailable(
                    f"The inference server did not finish {model!r} within {self.timeout_s:g} s; it is overloaded "
                    "or too slow for these models (LIPSYNC_TRITON_TIMEOUT_S raises the limit). The session stopped."
                ) from err
            raise InferenceUnavailable(
                f"The inference server could not run {model!r}: {err.message() or err}. "
                "The session stopped; try again in a moment."
            ) from err
        finally:
            self.metrics.triton_latency.labels(model).observe(time.perf_counter() - started)
        answer = {}
        for name in wanted:
            array = result.as_numpy(name)
            if array is None:
                raise InferenceUnavailable(f"The inference server's answer from {model!r} has no {name!r}.")
            answer[name] = array
        return answer

    async def frame_limit(self, model: str) -> int:
        """The most frames one request to ``model`` may carry: its max_batch_size, or for an ensemble without a
        batch axis the smallest of its steps' (asked once, from the server's own config)."""
        if model not in self._frame_limits:
            try:
                config = (await self._client.get_model_config(model, as_json=True, client_timeout=10.0))["config"]
                limit = int(config.get("max_batch_size", 0))
                if limit == 0 and config.get("platform") == "ensemble":
                    steps = config["ensemble_scheduling"]["step"]
                    limits = [await self.frame_limit(step["model_name"]) for step in steps]
                    limit = min((n for n in limits if n > 0), default=0)
            except InferenceServerException as err:
                raise InferenceUnavailable(
                    f"The inference server could not describe {model!r}: {err.message() or err}."
                ) from err
            self._frame_limits[model] = limit
        return self._frame_limits[model]

    async def missing(self, models: Iterable[str]) -> list[str]:
        """The models among ``models`` that the server does not have ready; InferenceUnavailable if unreachable."""
        try:
            return [m for m in models if not await self._client.is_model_ready(m, client_timeout=5.0)]
        except InferenceServerException as err:
            raise InferenceUnavailable(
                f"The inference server at {self.url} is unreachable ({err.message() or err}); try again in a moment."
            ) from err

    async def ready(self, models: Iterable[str]) -> tuple[bool, str]:
        """Whether the server and every model in ``models`` are ready, and if not, why."""
        try:
            if not await self._client.is_server_ready(client_timeout=2.0):
                return False, "the inference server is not ready"
            for model in models:
                if not await self._client.is_model_ready(model, client_timeout=2.0):
                    return False, f"model {model!r} is not ready"
        except InferenceServerException as err:
            return False, f"the inference server at {self.url} is unreachable ({err.message() or err})"
        return True, "ready"
