"""An echo bot with a face: Pipecat's small WebRTC transport, your own speech said back by the avatar.

No cloud keys: the bot's "TTS" is your last sentence, recorded between Silero VAD's start and stop of speech
and played back through this project's gateway (``lipsync.integrations.pipecat_service``). Put an STT → LLM →
TTS chain in place of ``Echo`` and the avatar stays as it is.

    make demo                      # the gateway and Triton on http://localhost:8000 (another terminal)
    make agents                    # .venv-agents: Pipecat and LiveKit Agents
    .venv-agents/bin/python examples/pipecat_echo_bot.py --portrait face.jpg
    # open http://localhost:7860/client, press Connect, say a sentence: the avatar says it back

``--gateway`` (default http://localhost:8000), ``--token`` (the gateway's LIPSYNC_AUTH_TOKEN) and ``--engine``
(wav2lip) choose the avatar; Pipecat's runner options (``--host``, ``--port``) work as well.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import create_transport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

from lipsync.agent import upload_avatar
from lipsync.integrations.pipecat_service import LipsyncVideoService

MAX_ECHO_SECONDS = 15  # a sentence, not a monologue: the recording is cut here


class Echo(FrameProcessor):
    """Records what the user says (between VAD's start and stop of speech) and sends it on as the bot's TTS."""

    def __init__(self) -> None:
        super().__init__()
        self._recording: list[bytes] | None = None
        self._rate = 16_000

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._recording = []
        elif isinstance(frame, InputAudioRawFrame):
            if self._recording is not None and sum(map(len, self._recording)) < MAX_ECHO_SECONDS * self._rate * 2:
                self._rate = frame.sample_rate
                self._recording.append(frame.audio)
            return  # the user's audio goes no further: only its echo is spoken
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._recording:
            audio, self._recording = b"".join(self._recording), None
            await self.push_frame(TTSStartedFrame())
            step = self._rate // 50 * 2  # 20 ms of 16-bit mono
            for start in range(0, len(audio), step):
                await self.push_frame(TTSAudioRawFrame(audio[start : start + step], self._rate, 1))
            await self.push_frame(TTSStoppedFrame())
        await self.push_frame(frame, direction)


async def bot(runner_args: RunnerArguments) -> None:
    """One client's session (Pipecat's runner calls this for each connection)."""
    gateway, token = os.environ["LIPSYNC_GATEWAY"], os.environ.get("LIPSYNC_TOKEN") or None
    avatar = await upload_avatar(gateway, Path(os.environ["LIPSYNC_PORTRAIT"]).read_bytes(), token=token)
    width, height = avatar["framings"]["portrait"]["width"], avatar["framings"]["portrait"]["height"]
    face = LipsyncVideoService(
        url=gateway,
        avatar_id=avatar["avatar_id"],
        token=token,
        options={"engine": os.environ.get("LIPSYNC_ENGINE", "wav2lip"), "framing": "portrait"},
    )
    transport = await create_transport(
        runner_args,
        {
            "webrtc": lambda: TransportParams(
                audio_in_enabled=True,
                audio_out_enabled=True,
                video_out_enabled=True,
                video_out_is_live=True,
                video_out_width=width,
                video_out_height=height,
                video_out_framerate=25,
            )
        },
    )
    pipeline = Pipeline(
        [transport.input(), VADProcessor(vad_analyzer=SileroVADAnalyzer()), Echo(), face, transport.output()]
    )
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=True))

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: object, client: object) -> None:
        await worker.cancel()

    await WorkerRunner(handle_sigint=runner_args.handle_sigint).run(worker)


def main() -> None:
    # No abbreviations: the runner adds --port, which would otherwise be taken for --portrait here.
    parser = argparse.ArgumentParser(
        description="An echo bot with a face (Pipecat + lipsync-triton)", allow_abbrev=False
    )
    parser.add_argument("--portrait", type=Path, required=True, help="a photo with one face (JPEG, PNG, WebP)")
    parser.add_argument("--gateway", default="http://localhost:8000", help="the lipsync-triton gateway")
    parser.add_argument("--token", default="", help="the gateway's LIPSYNC_AUTH_TOKEN, if it has one")
    parser.add_argument("--engine", default="wav2lip", choices=["wav2lip", "sadtalker"])
    ours, _ = parser.parse_known_args()
    # Pipecat's runner calls bot() per connection: what it needs goes through the environment.
    os.environ["LIPSYNC_GATEWAY"], os.environ["LIPSYNC_PORTRAIT"] = ours.gateway, str(ours.portrait)
    os.environ["LIPSYNC_TOKEN"], os.environ["LIPSYNC_ENGINE"] = ours.token, ours.engine
    from pipecat.runner.run import main as run_pipecat

    run_pipecat(parser)  # the runner adds its own options to ours and serves /client


if __name__ == "__main__":
    main()
