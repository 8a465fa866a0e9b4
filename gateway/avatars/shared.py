"""Avatar records in Redis (``LIPSYNC_REDIS_URL``): any gateway serves an avatar uploaded through another.

Records are keyed by their content hash (the avatar id), expire after ``ttl_s`` unless used (each load
renews it), and are written compactly by ``gateway.avatars.codec``. Redis is a cache here, never the only
copy of anything: when it is unreachable a gateway keeps serving the avatars it holds and makes new ones from
uploads; only an avatar it never saw cannot be served (the error says to upload it again).

Redis is not trusted: anything that can write to it could otherwise hand every gateway a forged avatar. A
record is stored as ``MAGIC | HMAC-SHA256(key, MAGIC | id | payload) | payload`` with the fleet's key
(``LIPSYNC_AVATAR_SIGNING_KEY``), so one written without the key, or moved under another avatar's id, is
refused like a damaged one (and counted), never decoded. At most the largest legitimate record is read, and
encoding, checking and decoding run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import struct
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from prometheus_client import Counter
from redis.exceptions import RedisError

from gateway.avatars.codec import RecordError, RecordTooLarge
from gateway.avatars.store import AvatarState

log = logging.getLogger(__name__)

KEY_PREFIX = "lipsync:avatar:"
MAGIC = b"lipsync-signed-avatar/1\n"
TAG_BYTES = hashlib.sha256().digest_size
MIN_KEY_BYTES = 16  # as LIPSYNC_AVATAR_SIGNING_KEY is checked


class SharedStoreDown(Exception):
    """Redis did not answer (or answered with an error); the message says what happened."""


class BadSignature(RecordError):
    """A record not signed with this gateway's key for the id it is stored under."""


class Codec(Protocol):
    """Records as bytes (``gateway.avatars.codec.RecordCodec``)."""

    @property
    def max_record_bytes(self) -> int: ...

    def snapshot(self, state: AvatarState) -> Any:
        """What ``pack`` encodes, taken on the event loop (cheap)."""
        ...

    def pack(self, snapshot: Any) -> bytes: ...

    def decode(self, data: bytes, avatar_id: str) -> AvatarState:
        """The record of ``avatar_id``; a ValueError (RecordError) for anything else."""
        ...


def tag(key: bytes, avatar_id: str, payload: bytes) -> bytes:
    """The HMAC of a record: over its id too (length-prefixed), so it is valid under that id only."""
    name = avatar_id.encode()
    mac = hmac.new(key, MAGIC, hashlib.sha256)
    mac.update(struct.pack(">I", len(name)) + name)
    mac.update(payload)
    return mac.digest()


def sign(key: bytes, avatar_id: str, payload: bytes) -> bytes:
    return MAGIC + tag(key, avatar_id, payload) + payload


def verify(key: bytes, avatar_id: str, record: bytes) -> bytes:
    """The payload of a record signed with ``key`` for ``avatar_id``; RecordError otherwise."""
    if not record.startswith(MAGIC) or len(record) < len(MAGIC) + TAG_BYTES:
        raise BadSignature("not a signed avatar record (written by an older version, or not by a gateway)")
    start = len(MAGIC) + TAG_BYTES
    payload = record[start:]
    if not hmac.compare_digest(record[len(MAGIC) : start], tag(key, avatar_id, payload)):
        raise BadSignature("its signature does not match (written without this fleet's key, or for another avatar)")
    return payload


class SharedAvatars:
    def __init__(
        self,
        url: str,
        *,
        ttl_s: float,
        codec: Codec,
        signing_key: str | bytes,
        refused: Counter | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.where = without_password(url)  # for messages: the URL may carry Redis's password
        self.ttl_s = ttl_s
        self.codec = codec
        self._key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        if len(self._key) < MIN_KEY_BYTES:
            raise ValueError(
                f"shared avatar records need a signing key of at least {MIN_KEY_BYTES} characters "
                "(LIPSYNC_AVATAR_SIGNING_KEY)"
            )
        self._refused = refused  # labelled by reason: signature, too_large, damaged
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    @property
    def max_stored_bytes(self) -> int:
        return len(MAGIC) + TAG_BYTES + self.codec.max_record_bytes

    async def close(self) -> None:
        await self._redis.aclose()

    async def load(self, avatar_id: str) -> AvatarState | None:
        """The record, or None when Redis does not have it (or has one this gateway does not accept)."""
        key = KEY_PREFIX + avatar_id
        try:
            # GETRANGE reads at most one byte past the largest record a gateway writes: an oversized value is
            # never transferred.
            data = await self._redis.getrange(key, 0, self.max_stored_bytes)
        except (RedisError, OSError) as err:
            raise SharedStoreDown(f"{self.where}: {err}") from err
        if not isinstance(data, bytes) or not data:  # a missing key reads as empty
            return None
        try:
            if len(data) > self.max_stored_bytes:
                raise RecordTooLarge(f"a record over {self.max_stored_bytes / 2**20:.1f} MiB")
            state = await asyncio.to_thread(self._open, avatar_id, data)
        except ValueError as err:  # RecordError, or a part's own ValueError
            self._refuse(avatar_id, err)
            return None
        try:  # only a record in use lives on; a refused one expires
            await self._redis.expire(key, int(self.ttl_s))
        except (RedisError, OSError) as err:
            log.warning("could not renew the shared record of avatar %s: %s", avatar_id[:12], err)
        return state

    async def save(self, state: AvatarState) -> None:
        snapshot = self.codec.snapshot(state)  # here: the avatar's parts are changed on the event loop
        try:
            record = await asyncio.to_thread(self._seal, state.id, snapshot)
        except RecordTooLarge as err:  # other gateways would refuse it: they make the avatar from an upload
            log.warning("avatar %s is not shared: its record is too large (%s)", state.id[:12], err)
            return
        try:
            await self._redis.set(KEY_PREFIX + state.id, record, ex=int(self.ttl_s))
        except (RedisError, OSError) as err:
            raise SharedStoreDown(f"{self.where}: {err}") from err

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    def _open(self, avatar_id: str, record: bytes) -> AvatarState:
        return self.codec.decode(verify(self._key, avatar_id, record), avatar_id)

    def _seal(self, avatar_id: str, snapshot: Any) -> bytes:
        return sign(self._key, avatar_id, self.codec.pack(snapshot))

    def _refuse(self, avatar_id: str, err: ValueError) -> None:
        reason = "damaged"
        if isinstance(err, BadSignature):
            reason = "signature"
        elif isinstance(err, RecordTooLarge):
            reason = "too_large"
        log.warning("refusing the shared record of avatar %s: %s", avatar_id[:12], err)
        if self._refused is not None:
            self._refused.labels(reason).inc()


def without_password(url: str) -> str:
    """``url`` with any password replaced, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
