"""Wav2Lip as an engine: its models, its avatar part (numpy only, made on first use) and its session runs, on a
photo (one face for every frame) or a video avatar (each frame's own: ``clip``)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import numpy as np

from gateway.avatars.portrait import Portrait
from gateway.avatars.store import AvatarState
from gateway.engines.base import Paste, same_picture
from gateway.engines.wav2lip.clip import ClipFaces
from gateway.engines.wav2lip.face import Wav2LipAvatar
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
    # The live CPU engine: int8 makes 25 fps reachable on 2 cores (export/quantize.py).
    int8_models: tuple[str, ...] = ("wav2lip",)
    takes_video = True  # only the mouth is rendered: the rest of each frame can be the person's own clip

    def __init__(self, audio_block: int = 4) -> None:
        self.mel_block = audio_block

    def models(self, options: SessionOptions) -> tuple[str, ...]:
        return ("mel", "wav2lip_render_enhanced" if options.enhance else "wav2lip_render")

    def portrait_part(self, portrait: Portrait) -> None:
        return None  # its faces are cut from the framings, which keep the output's pixels

    async def prepare(self, avatar: AvatarState, triton: TritonClient) -> None:
        if NAME not in avatar.parts:
            part = Wav2LipAvatar({})
            if avatar.clip is None:  # a clip's faces are made per frame, as sessions reach them
                part.face(avatar, Wav2LipOptions())  # the default framing, pads and blend
            avatar.add_part(NAME, part)

    def part_from_arrays(self, arrays: dict[str, np.ndarray], avatar: AvatarState) -> Wav2LipAvatar:
        return Wav2LipAvatar.from_arrays(arrays, avatar.framings)

    def start(self, avatar: AvatarState, options: SessionOptions, triton: TritonClient, seed: int) -> Wav2LipRun:
        wav2lip = options.of(Wav2LipOptions)
        faces: PhotoFace | ClipFaces
        if avatar.clip is None:
            face = avatar.part(NAME, Wav2LipAvatar).face(avatar, wav2lip)
            faces = PhotoFace(
                face.face_input, MaskedPasteBack(avatar.framings[options.framing].image, face.box, face.weights)
            )
        else:
            faces = ClipFaces(avatar.clip, avatar.framings[options.framing], avatar.width, avatar.height, wav2lip)
        return Wav2LipRun(faces, options, triton, self.mel_block)


class PhotoFace:
    """A photo's face: one network input for every frame, pasted into the one picture."""

    def __init__(self, face_input: np.ndarray, paste_back: MaskedPasteBack) -> None:
        self.face_input = face_input
        self.paste: Paste = same_picture(paste_back)

    def inputs(self, frames: range) -> np.ndarray:
        return np.repeat(self.face_input, len(frames), axis=0)


class Wav2LipRun:
    def __init__(
        self, faces: PhotoFace | ClipFaces, options: SessionOptions, triton: TritonClient, mel_block: int
    ) -> None:
        self.faces = faces
        self.model = "wav2lip_render_enhanced" if options.enhance else "wav2lip_render"
        self.triton = triton
        self.timeline = Wav2LipTimeline(
            chunk_frames=options.chunk_frames, mel_block=mel_block, first_chunk_frames=options.first_chunk_frames
        )
        self.paste: Paste = faces.paste
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
        # A clip's inputs are cut from its frames (JPEG decodes): off the event loop.
        face_inputs = (
            self.faces.inputs(request.frames)
            if isinstance(self.faces, PhotoFace)
            else await asyncio.to_thread(self.faces.inputs, request.frames)
        )
        faces = []
        for start in range(0, k, limit):
            windows = request.windows[start : start + limit]
            inputs = {"mel_window": windows, "face_input": face_inputs[start : start + limit]}
            faces.append((await self.triton.infer(self.model, inputs, ["face"]))["face"])
        result = np.concatenate(faces)
        if result.shape[0] != k:
            raise InferenceUnavailable(f"{self.model} answered {result.shape[0]} faces for {k} frames")
        return result
