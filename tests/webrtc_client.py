"""A WebRTC client of the gateway made with aiortc, as an agent process would be: offer, data channel, tracks."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import av
import httpx
import numpy as np
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from gateway.media import framecode


@dataclass
class Received:
    """What the client got: messages in order, each video frame's code (None: no code) and the audio."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    codes: list[int | None] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)
    audio_rate: int = 48_000
    video_size: tuple[int, int] | None = None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def audio_samples(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


class Peer:
    """One session: :meth:`connect` posts the offer; frames, audio and messages are collected as they come."""

    def __init__(self, url: str, *, microphone: MediaStreamTrack | None = None, token: str | None = None) -> None:
        self.url = url
        self.token = token
        self.pc = RTCPeerConnection()
        self.got = Received()
        self.channel: RTCDataChannel = self.pc.createDataChannel("control")
        self.message_arrived = asyncio.Event()
        self.frame_arrived = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        if microphone is not None:
            self.pc.addTrack(microphone)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)

        @self.channel.on("message")
        def on_message(message: str | bytes) -> None:
            assert isinstance(message, str)
            self.got.messages.append(json.loads(message))
            self.message_arrived.set()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._readers.append(asyncio.ensure_future(self._read(track)))

    async def post_offer(self, start: dict[str, Any], sdp: str | None = None) -> httpx.Response:
        if sdp is None:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            sdp = self.pc.localDescription.sdp
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(
                f"{self.url}/v1/webrtc/offer", json={"sdp": sdp, "type": "offer", "start": start}, headers=headers
            )

    async def connect(self, start: dict[str, Any]) -> dict[str, Any]:
        response = await self.post_offer(start)
        assert response.status_code == 200, response.text
        answer = response.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self.opened.wait(), 30)
        return dict(answer)

    async def message(self, kind: str, timeout: float = 120) -> dict[str, Any]:
        """The first message of type ``kind`` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while not (found := self.got.of_type(kind)):
                self.message_arrived.clear()
                await self.message_arrived.wait()
        return found[0]

    async def frame_coded(self, number: int, timeout: float = 30) -> None:
        """Wait until the frame whose code is ``number`` (or a later one) has arrived."""
        async with asyncio.timeout(timeout):
            while not any(code is not None and code >= number for code in self.got.codes):
                self.frame_arrived.clear()
                await self.frame_arrived.wait()

    def send(self, message: dict[str, Any] | bytes) -> None:
        self.channel.send(message if isinstance(message, bytes) else json.dumps(message))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame):
                self.got.video_size = (frame.width, frame.height)
                self.got.codes.append(framecode.read(frame.to_ndarray(format="rgb24")))
                self.frame_arrived.set()
            else:
                assert isinstance(frame, av.AudioFrame)
                self.got.audio_rate = frame.sample_rate
                samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                self.got.audio.append(samples.astype(np.int16))

    async def end(self) -> dict[str, Any]:
        """Send `end`; the server's `end`, once its last frame has arrived too (`end` follows the last frame sent,
        not the last decoded here)."""
        self.send({"type": "end"})
        end = await self.message("end")
        await self.frame_coded(end["frames"] - 1)
        return end

    async def close(self) -> None:
        await self.pc.close()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def video_codec(sdp: str) -> str:
    """The video codec an SDP answer chose: the first payload type of its video line, by its rtpmap."""
    lines = sdp.splitlines()
    payload = next(line.split()[3] for line in lines if line.startswith("m=video"))
    rtpmap = next(line for line in lines if line.startswith(f"a=rtpmap:{payload} "))
    return rtpmap.split()[1].split("/")[0]
