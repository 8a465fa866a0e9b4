"""``POST /v1/webrtc/offer``: a WebRTC session (docs/protocol.md §5) — the client's SDP offer and `start` fields in,
our SDP answer out; the session then runs over the connection (:mod:`gateway.transport.webrtc`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.context import Ctx, client_key
from gateway.errors import BadMessage, UnknownAvatar
from gateway.transport.http_errors import error_responses
from gateway.transport.protocol import Start, describe_error
from gateway.transport.webrtc import PeerSession, ice_servers
from gateway.transport.webrtc_media import AvatarMedia

log = logging.getLogger(__name__)
router = APIRouter()

MAX_SDP_CHARS = 32_768  # a browser's offer with audio, video and a data channel is 3-6 KB
# Frames per render call unless the options say otherwise. An interrupt takes back what the tracks have not
# begun from the next chunk on, so smaller chunks cut sooner: with 4 the lips stopped ≈ 120 ms after the click
# in Chromium here, with 8 (the WebSocket's default, where every chunk is also a keyframe) ≈ 220 ms.
CHUNK_FRAMES = 4


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(min_length=1, max_length=MAX_SDP_CHARS)
    type: Literal["offer"]
    # The `start` message of /ws/stream without its `type`: avatar_id, mode, audio, options.
    start: dict[str, Any]


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"]
    session_id: str


class IceServer(BaseModel):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceServers(BaseModel):
    ice_servers: list[IceServer]


@router.get("/v1/webrtc/ice-servers", responses=error_responses(401, 403))
async def get_ice_servers(ctx: Ctx) -> IceServers:
    """The STUN/TURN servers to give the client's peer connection before it makes its offer (empty: host
    candidates only); TURN credentials, when the server has a TURN secret, are this client's and expire."""
    return IceServers.model_validate({"ice_servers": ice_servers(ctx.settings)})


@router.post("/v1/webrtc/offer", responses=error_responses(400, 401, 403, 404, 413, 429, 503))
async def offer(body: Offer, request: Request, ctx: Ctx) -> Answer:
    """Start a session over WebRTC: audio in on the client's track or data channel, video and audio out on
    tracks, control messages on the client's data channel."""
    fields = dict(body.start)
    options = fields.get("options")
    if options is None or (isinstance(options, dict) and "chunk_frames" not in options):
        fields["options"] = {**(options or {}), "chunk_frames": CHUNK_FRAMES}
    try:
        start = Start.model_validate({**fields, "type": "start"})
    except ValidationError as err:
        raise BadMessage(f"Invalid `start` fields ({describe_error(err)}).") from err
    if start.audio.format != "pcm_s16le":
        raise BadMessage("Over WebRTC audio comes as a track or as PCM on the data channel (audio.format pcm_s16le).")
    state = await ctx.avatars.get(start.avatar_id)
    if state is None:
        raise UnknownAvatar(start.avatar_id)
    slot = contextlib.ExitStack()
    slot.enter_context(ctx.slots.hold(client_key(request)))
    try:
        options = start.session_options()
        media = AvatarMedia(state.framings[options.framing].image)
        session = await ctx.new_session(state, options, sink=media)
        peer = PeerSession(ctx, start, uuid.uuid4().hex)
        try:
            answer = await peer.answer(body.sdp, session, media)
        except BaseException:
            await peer.close()
            raise
    except BaseException:
        slot.close()
        raise
    peers: set[asyncio.Task[None]] = request.app.state.webrtc_peers
    task = asyncio.create_task(_run(peer, slot))
    peers.add(task)
    task.add_done_callback(peers.discard)
    log.info("WebRTC session %s offered (avatar %s)", peer.session_id, state.id[:12])
    return Answer(sdp=answer.sdp, type="answer", session_id=peer.session_id)


async def _run(peer: PeerSession, slot: contextlib.ExitStack) -> None:
    with slot:
        await peer.run()
