"""Avatar records in Redis (``LIPSYNC_REDIS_URL``): any gateway serves an avatar uploaded through another.

Records are keyed by their content hash (the avatar id), expire after ``ttl_s`` unless used (each load
renews it), and are written compactly by ``gateway.avatar_codec``. Redis is a cache here, never the only
copy of anything: when it is unreachable a gateway keeps serving the avatars it holds and makes new ones from
uploads; only an avatar it never saw cannot be served (the error says to upload it again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

from gateway.avatar_store import AvatarState

log = logging.getLogger(__name__)

KEY_PREFIX = "lipsync:avatar:"


class SharedStoreDown(Exception):
    """Redis did not answer (or answered with an error); the message says what happened."""


class SharedAvatars:
    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        encode: Callable[[AvatarState], bytes],
        decode: Callable[[bytes], AvatarState],
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.encode = encode
        self.decode = decode
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    async def close(self) -> None:
        await self._redis.aclose()

    async def load(self, avatar_id: str) -> AvatarState | None:
        """The record, or None when Redis does not have it (or has one this gateway cannot read)."""
        try:
            data = await self._redis.getex(KEY_PREFIX + avatar_id, ex=int(self.ttl_s))
        except (RedisError, OSError) as err:
            raise SharedStoreDown(f"{self.url}: {err}") from err
        if not isinstance(data, bytes):  # a missing key (None), or a value this store did not write
            return None
        try:
            return self.decode(data)
        except ValueError as err:
            log.warning("ignoring the shared record of avatar %s: %s", avatar_id[:12], err)
            return None

    async def save(self, state: AvatarState) -> None:
        data = self.encode(state)
        try:
            await self._redis.set(KEY_PREFIX + state.id, data, ex=int(self.ttl_s))
        except (RedisError, OSError) as err:
            raise SharedStoreDown(f"{self.url}: {err}") from err

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False
