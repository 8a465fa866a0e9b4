"""Wav2Lip on a video avatar: each session frame's face from the clip frame it shows (``AvatarClip.index``).

A photo has one face crop for every frame; a clip has one per frame: its box from that frame's smoothed
landmarks, its crop cut from the frame as sessions decode it (the clip's JPEG), its lower-face mask from the
same landmarks. Nothing is kept per session beyond the frame being worked on, so a session costs a JPEG decode
per frame for the network's input and one for the paste-back (docs/measurements.md), not a clip's worth of
decoded pictures.
"""

from __future__ import annotations

import numpy as np

from gateway.avatars.framing import Framing
from gateway.avatars.portrait import Box
from gateway.avatars.video import AvatarClip, ClipFrames
from gateway.engines.wav2lip.face import Wav2LipFace, crop_input, face_box, make_face, paste_weights
from gateway.engines.wav2lip.options import Wav2LipOptions
from gateway.media.pasteback import MaskedPasteBack


class ClipFaces:
    """A clip avatar's Wav2Lip faces in one framing, with one session's pads and blend."""

    def __init__(self, clip: AvatarClip, framing: Framing, width: int, height: int, options: Wav2LipOptions) -> None:
        self.clip = clip
        self.frames: ClipFrames = clip.frames[options.framing]
        self.framing = framing  # frame 0's: the origin and scale of every frame
        self.width, self.height = width, height  # the clip's own pixels (landmark coordinates)
        self.pads = options.pads
        self.blend = options.blend

    def _picture(self, frame: int) -> tuple[Framing, np.ndarray, Box]:
        """Session frame ``frame``'s clip picture (decoded), its landmarks and its face box (clip pixels)."""
        index = self.clip.index(frame)
        picture = Framing(self.frames.frame(index), self.framing.origin, self.framing.scale)
        landmarks = self.clip.landmarks[index]
        return picture, landmarks, face_box(landmarks, self.width, self.height, self.pads)

    def face(self, frame: int) -> tuple[Wav2LipFace, np.ndarray]:
        """Session frame ``frame``'s face for Wav2Lip, and the clip picture it is pasted into."""
        picture, landmarks, box = self._picture(frame)
        return make_face(picture, box, landmarks, self.blend), picture.image

    def inputs(self, frames: range) -> np.ndarray:
        """(K, 6, 96, 96) float32: the network's face input of each session frame."""
        inputs = []
        for frame in frames:
            picture, _, box = self._picture(frame)
            inputs.append(crop_input(picture, box))
        return np.concatenate(inputs)

    def paste(self, face: np.ndarray, frame: int) -> np.ndarray:
        """The rendered face blended into session frame ``frame``'s clip picture (a new frame)."""
        picture, landmarks, box = self._picture(frame)
        where, weights = paste_weights(picture, box, landmarks, self.blend)
        return MaskedPasteBack(picture.image, where, weights)(face)
