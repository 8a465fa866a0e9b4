"""An avatar worker for LiveKit Agents, in the pattern of LiveKit's own avatar examples, rendered by this
project's gateway (``lipsync.integrations.livekit_avatar``).

The voice agent (your ``AgentSession``) sends its TTS audio to this worker through the room with
``DataStreamAudioOutput(room, destination_identity=<this worker's identity>)``; the worker joins the same room,
receives the audio (``DataStreamAudioReceiver``), and ``AvatarRunner`` publishes the frames and audio that
``LipsyncVideoGenerator`` yields, in sync, as the avatar's camera and microphone tracks. Interruptions reach
the generator as ``clear_buffer``.

Needs a LiveKit server (e.g. ``livekit-server --dev`` on ws://localhost:7880, key ``devkey``, secret ``secret``)
and the gateway (``make demo``)::

    make agents
    LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
        .venv-agents/bin/python examples/livekit_avatar_worker.py --room my-room --portrait face.jpg

``--gateway`` (default http://localhost:8000), ``--token`` (the gateway's LIPSYNC_AUTH_TOKEN), ``--identity``
(the avatar's participant identity, ``lipsync-avatar``) and ``--agent-identity`` (whose audio to take; the
first agent in the room by default).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from livekit import api, rtc
from livekit.agents.voice.avatar import AvatarOptions, AvatarRunner, DataStreamAudioReceiver

from lipsync.agent import upload_avatar
from lipsync.audio import FPS, SAMPLE_RATE
from lipsync.integrations.livekit_avatar import LipsyncVideoGenerator

log = logging.getLogger("livekit_avatar_worker")


def room_token(room: str, identity: str) -> str:
    """A token for this worker to join ``room``, from the LiveKit server's key and secret."""
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    token = api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
    return token.with_identity(identity).with_kind("agent").with_grants(grants).to_jwt()


async def run(args: argparse.Namespace) -> None:
    avatar = await upload_avatar(args.gateway, args.portrait.read_bytes(), token=args.token or None)
    room = rtc.Room()
    await room.connect(os.environ["LIVEKIT_URL"], room_token(args.room, args.identity))
    log.info("joined room %s as %s", args.room, args.identity)
    try:
        async with LipsyncVideoGenerator.connect(
            args.gateway, avatar["avatar_id"], token=args.token or None, options={"engine": args.engine}
        ) as generator:
            width, height = generator.size
            runner = AvatarRunner(
                room,
                audio_recv=DataStreamAudioReceiver(room, sender_identity=args.agent_identity),
                video_gen=generator,
                options=AvatarOptions(
                    video_width=width,
                    video_height=height,
                    video_fps=FPS,
                    audio_sample_rate=SAMPLE_RATE,
                    audio_channels=1,
                ),
            )
            await runner.start()
            try:
                await runner.wait_for_complete()
            finally:
                await runner.aclose()
    finally:
        await room.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description="A LiveKit avatar worker rendered by lipsync-triton")
    parser.add_argument("--room", required=True, help="the LiveKit room the agent is in")
    parser.add_argument("--portrait", type=Path, required=True, help="a photo with one face (JPEG, PNG, WebP)")
    parser.add_argument("--gateway", default="http://localhost:8000", help="the lipsync-triton gateway")
    parser.add_argument("--token", default="", help="the gateway's LIPSYNC_AUTH_TOKEN, if it has one")
    parser.add_argument("--engine", default="wav2lip", choices=["wav2lip", "sadtalker"])
    parser.add_argument("--identity", default="lipsync-avatar", help="this worker's participant identity")
    parser.add_argument("--agent-identity", default=None, help="the agent whose audio to take (default: the first)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
