"""Wav2Lip as an engine: its models, its avatar part (numpy only, made on first use) and its session runs."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import numpy as np

from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.engines.wav2lip.face import Wav2LipAvatar, Wav2LipFace
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.engines.wav2lip.timeline import MelRequest, Wav2LipTimeline
from gateway.errors import InferenceUnavailable
from gateway.media.pasteback import MaskedPasteBack
from gateway.session.options import SessionOptions
from gateway.session.timeline import RenderRequest
from gateway.triton.client import TritonClient

NAME = "wav2lip"

# A frame's window ends 15 mel frames after int(80·i/25): 212.5 ms of audio after the frame starts (the STFT
# reads 25 ms past its frame), plus the 40 ms granularity of whole frames.
LOOKAHEAD_MS = 15 * 12.5 + 25 + 40


class Wav2Lip:
    name = NAME
    options_model = Wav2LipOptions

    def __init__(self, audio_block: int = 4) -> None:
        self.mel_block = audio_block

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        return ("mel", "wav2lip_render_enhanced" if options.enhance else "wav2lip_render")

    def portrait_part(self, portrait: Portrait) -> None:
        return None  # its faces are cut from the framings, which keep the output's pixels

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        if NAME not in avatar.parts:
            part = Wav2LipAvatar({})
            part.face(avatar, Wav2LipOptions())  # the default framing, pads and blend
            avatar.add_part(NAME, part)

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> Wav2LipAvatar:
        return Wav2LipAvatar.from_arrays(arrays, avatar.framings)

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> Wav2LipRun:
        face = avatar.part(NAME, Wav2LipAvatar).face(avatar, options.of(Wav2LipOptions))
        return Wav2LipRun(face, avatar, options, triton, self.mel_block)


class Wav2LipRun:
    def __init__(
        self, face: Wav2LipFace, avatar: AvatarState, options: SessionOptions, triton: TritonClient, mel_block: int
    ) -> None:
        self.face = face
        self.model = "wav2lip_render_enhanced" if options.enhance else "wav2lip_render"
        self.triton = triton
        self.timeline = Wav2LipTimeline(
            chunk_frames=options.chunk_frames, mel_block=mel_block, first_chunk_frames=options.first_chunk_frames
        )
        self.paste = MaskedPasteBack(avatar.framings[options.framing].image, face.box, face.weights)
        self.lookahead_ms = LOOKAHEAD_MS
        self.audio_block = mel_block

    def calls(self) -> list[Coroutine[Any, Any, None]]:
        return [self._mel(request) for request in self.timeline.mel_requests()]

    def render_requests(self) -> list[RenderRequest]:
        return self.timeline.render_requests()

    async def _mel(self, request: MelRequest) -> None:
        mel = (await self.triton.infer("mel", {"signal": request.span.signal}, ["mel"]))["mel"][0]
        self.timeline.set_mel(request, mel)

    async def render(self, request: RenderRequest) -> np.ndarray:
        """One chunk's faces, in as many requests as the served model takes frames (GFPGAN takes fewer)."""
        k = len(request.frames)
        limit = await self.triton.frame_limit(self.model) or k
        faces = []
        for start in range(0, k, limit):
            windows = request.windows[start : start + limit]
            inputs = {"mel_window": windows, "face_input": np.repeat(self.face.face_input, len(windows), axis=0)}
            faces.append((await self.triton.infer(self.model, inputs, ["face"]))["face"])
        result = np.concatenate(faces)
        if result.shape[0] != k:
            raise InferenceUnavailable(f"{self.model} answered {result.shape[0]} faces for {k} frames")
        return result
