"""WebRTC sessions (aiortc): the offer/answer, the data channel as the session's link, the microphone track in.

A client posts its SDP offer with the same `start` fields as ``/ws/stream`` (``POST /v1/webrtc/offer``); the
answer carries a video and an audio track (:mod:`gateway.transport.webrtc_media`). Control messages travel on
the client's data channel as the same JSON as on ``/ws/stream`` (``ready``, ``stats``, ``interrupted``, ``end``,
``error``; from the client ``utterance``, ``interrupt``, ``end``). Audio comes in as the client's audio track
(a browser's microphone, resampled here) or as binary PCM messages on the data channel (an agent), never both.

The session runs once the data channel opens, within the start deadline; a peer whose connection fails or
closes ends its session and frees its slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.context import Context
from gateway.errors import BadMessage, LipsyncError, StartTimeout
from gateway.session.core import StreamSession
from gateway.session.messages import Message, StreamError
from gateway.settings import Settings
from gateway.transport.converse import converse
from gateway.transport.protocol import Start
from gateway.transport.webrtc_media import AvatarMedia
from gateway.transport.ws import InternalError, Link

log = logging.getLogger(__name__)

# Messages waiting to be read (a client's data channel and microphone): more than this is a flood.
INBOX_LIMIT = 512
# The data channel's send buffer: a client that reads nothing past this is cut off.
MAX_BUFFERED_BYTES = 1 << 20
# After `end`, how long the client has to close the connection itself (so the message is not lost).
CLOSE_GRACE_S = 5.0


class PeerGone(Exception):
    """The client's connection failed or was closed."""


class PeerNotReading(LipsyncError):
    code = "client_not_reading"

    def __init__(self) -> None:
        super().__init__(
            f"The client read nothing of its data channel for a while (over {MAX_BUFFERED_BYTES:,} bytes "
            "waiting); the session stopped."
        )


class DataChannelLink(Link):
    """The session's link over WebRTC: the data channel's messages, and the microphone's audio as PCM."""

    def __init__(self, ctx: Context, audio_rate: int) -> None:
        super().__init__(ctx)
        self.audio_rate = audio_rate
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=INBOX_LIMIT)
        self._channel: RTCDataChannel | None = None
        self.open = asyncio.Event()
        self._track_reader: asyncio.Task[None] | None = None
        self._ended = False  # the client said `end`: its microphone's last packets are not audio after it

    # ------------------------------------------------------------------------------------------- in

    def attach(self, channel: RTCDataChannel) -> None:
        if self._channel is not None:
            self._push({"error": BadMessage("Open one data channel per session, not several.")})
            return
        self._channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._push({"text": message} if isinstance(message, str) else {"bytes": bytes(message)})

        @channel.on("close")
        def on_close() -> None:
            self._push({"gone": "the data channel closed"})

        if channel.readyState == "open":
            self.open.set()
        else:
            channel.on("open", self.open.set)

    def listen(self, track: MediaStreamTrack) -> None:
        """The client's audio track: its samples arrive as PCM messages at ``audio_rate``, mono."""
        if self._track_reader is not None:
            self._push({"error": BadMessage("Send one audio track per session, not several.")})
            return
        self._track_reader = asyncio.ensure_future(self._read_track(track))

    async def _read_track(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=self.audio_rate)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return  # the track ended: the data channel says how the session ends
            assert isinstance(frame, av.AudioFrame)
            pcm = b"".join(bytes(out.to_ndarray().astype(np.int16).tobytes()) for out in resampler.resample(frame))
            if pcm and not self._ended:
                await self._inbox.put({"bytes": pcm, "track": True})

    def _push(self, message: dict[str, Any]) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            # The reader is far behind: end the session rather than hold an unbounded backlog.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._inbox.get_nowait()
            self._inbox.put_nowait({"error": BadMessage("The client sent messages faster than they are read.")})

    async def receive(self, timeout: float | None = None, on_timeout: LipsyncError | None = None) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                message = await self._next()
        except TimeoutError:
            if on_timeout is None:
                raise
            raise on_timeout from None
        if "gone" in message:
            raise PeerGone(message["gone"])
        if "error" in message:
            raise message["error"]
        if message.get("text") is not None and _is_end(message["text"]):
            self._ended = True
        return self.check_size({key: message[key] for key in ("text", "bytes") if key in message})

    async def _next(self) -> dict[str, Any]:
        while True:
            message = await self._inbox.get()
            if not (message.get("track") and self._ended):  # the microphone trails `end` by a packet or two
                return message

    # ------------------------------------------------------------------------------------------- out

    async def send(self, item: bytes | Message) -> None:
        if isinstance(item, bytes):
            raise TypeError("media travels on the tracks, not the data channel")
        channel = self._channel
        if channel is None or channel.readyState != "open":
            raise PeerGone("the data channel is not open")
        if channel.bufferedAmount > MAX_BUFFERED_BYTES:
            raise PeerNotReading()
        channel.send(json.dumps(item.to_json()))

    def say_error(self, error: LipsyncError) -> None:
        """The error as the last message, where the channel is still open."""
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps(StreamError.of(error).to_json()))

    def stop(self) -> None:
        if self._track_reader is not None:
            self._track_reader.cancel()
        self._push({"gone": "the connection ended"})


class PeerSession:
    """One WebRTC client: its peer connection, media, link and stream session."""

    def __init__(self, ctx: Context, start: Start, session_id: str) -> None:
        self.ctx = ctx
        self.start = start
        self.session_id = session_id
        # Host candidates, and the operator's STUN/TURN servers if any (docs/protocol.md §5).
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers(ctx.settings)))
        self.link = DataChannelLink(ctx, start.audio.sample_rate)
        self.media: AvatarMedia | None = None
        self.session: StreamSession | None = None

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self.link.attach(channel)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.link.listen(track)

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self.link.stop()

    async def answer(self, offer_sdp: str, session: StreamSession, media: AvatarMedia) -> RTCSessionDescription:
        """Our answer to the client's offer, with the avatar's tracks (H.264 where the client offers it)."""
        self.session, self.media = session, media
        # Our transceivers first, so that the offer's m-lines take them with our codec preference; audio is
        # sendrecv: the client's microphone, if it sends one, comes in on it.
        video = self.pc.addTransceiver(media.video, direction="sendonly")
        video.setCodecPreferences(_h264_first())
        self.pc.addTransceiver(media.audio, direction="sendrecv")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as err:  # aiortc raises ValueError and others for SDP it cannot use
            raise BadMessage(f"The SDP offer could not be used: {str(err) or 'it is malformed'}.") from err
        if video.mid is None:
            raise BadMessage("The SDP offer has no video: offer to receive a video track (and an audio track).")
        # (An offer without audio leaves our audio transceiver out of the answer: the video plays alone.)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription

    async def run(self) -> None:
        """The session, from the data channel's opening to `end` or an error; then the connection closes."""
        session, media, link = self.session, self.media, self.link
        assert session is not None and media is not None
        settings = self.ctx.settings
        try:
            try:
                await asyncio.wait_for(link.open.wait(), settings.start_timeout_s)
            except TimeoutError:
                raise StartTimeout(settings.start_timeout_s) from None

            async def played() -> None:
                await asyncio.wait_for(media.drained.wait(), settings.drain_timeout_s)

            await link.run_until_expired(lambda: converse(link, session, self.start, self.session_id, played))
            with contextlib.suppress(TimeoutError):  # the client closes first, so that `end` reaches it
                await asyncio.wait_for(self._closed(), CLOSE_GRACE_S)
        except PeerGone as gone:
            log.info("WebRTC session %s: the client left (%s)", self.session_id, gone)
        except LipsyncError as error:
            log.info("WebRTC session %s error %s: %s", self.session_id, error.code, error.message)
            self.ctx.metrics.errors.labels(error.code).inc()
            link.say_error(error)
        except Exception:
            log.exception("WebRTC session %s failed", self.session_id)
            link.say_error(InternalError())
        finally:
            await self.close()

    async def _closed(self) -> None:
        while self.pc.connectionState not in ("closed", "failed"):
            with contextlib.suppress(PeerGone):
                await self.link.receive()

    async def close(self) -> None:
        self.link.stop()
        if self.media is not None:
            self.media.stop()
        await self.pc.close()


def ice_servers(settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """The STUN/TURN servers for one client, as RTCIceServer dictionaries (the browser's and aiortc's form).

    TURN servers get credentials of the TURN REST API when a secret is set: the user name is the expiry time,
    the credential its HMAC-SHA1 under the secret (coturn's `use-auth-secret`), so nothing long-lived leaves
    the server.
    """
    stun = [url for url in settings.ice_servers if url.startswith("stun:")]
    turn = [url for url in settings.ice_servers if not url.startswith("stun:")]
    servers: list[dict[str, Any]] = [{"urls": stun}] if stun else []
    if turn:
        server: dict[str, Any] = {"urls": turn}
        if settings.turn_secret is not None:
            expires = int(time.time() if now is None else now) + settings.turn_ttl_s
            username = f"{expires}:lipsync"
            digest = hmac.new(settings.turn_secret.encode(), username.encode(), hashlib.sha1).digest()
            server |= {"username": username, "credential": base64.b64encode(digest).decode()}
        servers.append(server)
    return servers


def rtc_configuration(servers: list[dict[str, Any]]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(**server) for server in servers])


def _is_end(text: str) -> bool:
    try:
        message = json.loads(text)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "end"


def _h264_first() -> list[Any]:
    """Our video codecs, H.264 before VP8: the answer takes the first the client also offers."""
    codecs = RTCRtpSender.getCapabilities("video").codecs
    return sorted(codecs, key=lambda codec: codec.mimeType.lower() != "video/h264")
