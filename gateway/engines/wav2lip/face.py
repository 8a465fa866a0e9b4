"""Wav2Lip: each frame's 16 mel frames + the portrait's face crop → a 96² face with the lips for the audio.

Upstream (Rudrabha/Wav2Lip ``inference.py``; weights non-commercial) detects the face with S3FD, pads the box
by ``pads`` = [top, bottom, left, right] pixels (clamped to the image), resizes it to 96², and pastes the
network's face back into the box as is. Here:

- **The face box** comes from dlib's 68 landmarks (:func:`face_box`): across the jaw line's extremes (points
  0 and 16), down to the chin (point 8), up to a fifth of the brow-to-chin height above the brows. S3FD's boxes
  run from the forehead to about the chin and across the cheeks, which is why upstream's default pads add
  10 px at the bottom; this box has that shape, so upstream's pads mean the same here.
- **The crop** is cut from the output framing (``portrait`` or ``face``) — the picture the face is pasted back
  into — and resized to 96² bilinearly (upstream's ``cv2.resize``), in BGR; :func:`lipsync.wav2lip.face_input`
  makes the network's input. A still portrait has one crop, so it is computed once per (framing, pads).
- **Paste-back** blends instead of pasting hard: ``blend="box"`` feathers the box's edge (upstream-like);
  ``blend="lower_face"`` (default) blends only the jaw, mouth and chin, inside a feathered mask below the nose
  from the landmarks (:func:`lower_face_weights`), so the box's edge never shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import cv2
import numpy as np

from gateway.avatars.framing import Framing, portrait_framing
from gateway.avatars.portrait import Box, decode_image, detect_face
from gateway.avatars.store import AvatarState
from gateway.engines.wav2lip.options import DEFAULT_PADS, Wav2LipOptions
from gateway.media.pasteback import FEATHER, feather_weights
from lipsync.wav2lip import FACE_SIZE, face_input

# How far above the brows the box starts, as a fraction of the brow-to-chin height (S3FD's boxes include the
# lower forehead).
FOREHEAD = 0.2
# The lower-face mask's feather (Gaussian σ) as a fraction of the box's shorter side.
MASK_FEATHER = 0.06


def face_box(landmarks: np.ndarray, width: int, height: int, pads: tuple[int, int, int, int]) -> Box:
    """The S3FD-like face box of 68 landmarks (photo pixels), padded by ``pads`` [top, bottom, left, right]
    and clamped to the photo, as upstream pads S3FD's box."""
    lm = np.asarray(landmarks, dtype=np.float64)
    jaw = lm[0:17]
    brows = lm[17:27]
    chin_y = lm[8, 1]
    brow_y = brows[:, 1].min()
    top = brow_y - FOREHEAD * (chin_y - brow_y)
    pad_top, pad_bottom, pad_left, pad_right = pads
    return Box(
        max(0, math.floor(jaw[:, 0].min()) - pad_left),
        max(0, math.floor(top) - pad_top),
        min(width, math.ceil(jaw[:, 0].max()) + pad_right),
        min(height, math.ceil(chin_y) + pad_bottom),
    )


def lower_face_weights(landmarks_in_box: np.ndarray, box: Box) -> np.ndarray:
    """(box height, box width) float32 weights: 1 on the jaw, mouth and chin below the nose, feathered to 0.

    The region is the polygon of the jaw line (points 1–15) closed under the nose (points 35, 33, 31); the
    feathered box is multiplied in, so no weight reaches the box's edge.
    """
    polygon = np.concatenate([landmarks_in_box[1:16], landmarks_in_box[[35, 33, 31]]])
    mask = np.zeros((box.height, box.width), np.float32)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], (1.0,))
    sigma = MASK_FEATHER * min(box.width, box.height)
    size = 2 * math.ceil(3 * sigma) + 1
    blurred = cv2.GaussianBlur(mask, (size, size), sigma)
    return np.ascontiguousarray(blurred * feather_weights(box.width, box.height, FEATHER))


@dataclass(frozen=True, eq=False)
class Wav2LipFace:
    """One framing's face for Wav2Lip: the network's face input, and where and how the result is pasted."""

    face_input: np.ndarray  # (1, 6, 96, 96) float32
    box: Box  # in the framing's pixels
    weights: np.ndarray  # (box height, box width) float32

    @property
    def nbytes(self) -> int:
        return int(self.face_input.nbytes + self.weights.nbytes)


def crop_input(framing: Framing, photo_box: Box) -> np.ndarray:
    """(1, 6, 96, 96): the network's input for the face in ``photo_box``, cut from the framing's picture."""
    box = framing.box(photo_box)
    region = framing.image[box.y0 : box.y1, box.x0 : box.x1]
    crop_bgr = cv2.resize(cv2.cvtColor(region, cv2.COLOR_RGB2BGR), (FACE_SIZE, FACE_SIZE))  # INTER_LINEAR
    return face_input(crop_bgr[None])


def paste_weights(framing: Framing, photo_box: Box, landmarks: np.ndarray, blend: str) -> tuple[Box, np.ndarray]:
    """Where in the framing the face is pasted, and with what weights (see ``blend``)."""
    box = framing.box(photo_box)
    if blend == "box":
        return box, feather_weights(box.width, box.height, FEATHER)
    points = framing.points(landmarks) - np.array([box.x0, box.y0])
    return box, lower_face_weights(points, box)


def make_face(framing: Framing, photo_box: Box, landmarks: np.ndarray, blend: str) -> Wav2LipFace:
    return Wav2LipFace(crop_input(framing, photo_box), *paste_weights(framing, photo_box, landmarks, blend))


def portrait_face_input(image_bytes: bytes, max_side: int = 1280) -> np.ndarray:
    """(1, 6, 96, 96): the network's face input for a portrait, as a default session builds it (``portrait``
    framing, upstream's pads). For tools (int8 calibration from real faces, ``python -m export quantize``)."""
    image = decode_image(image_bytes)
    detection = detect_face(image)
    height, width = image.shape[:2]
    box = face_box(detection.landmarks, width, height, DEFAULT_PADS)
    return make_face(portrait_framing(image, max_side), box, detection.landmarks, "box").face_input


@dataclass(eq=False)
class Wav2LipAvatar:
    """The portrait's faces for Wav2Lip, per (framing, pads, blend), made on first use (numpy only)."""

    faces: dict[tuple[str, tuple[int, int, int, int], str], Wav2LipFace]

    @property
    def nbytes(self) -> int:
        return sum(face.nbytes for face in self.faces.values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for number, ((framing, pads, blend), face) in enumerate(self.faces.items()):
            arrays[f"{number}.key"] = np.array(json.dumps([framing, list(pads), blend]))
            arrays[f"{number}.face_input"] = face.face_input
            arrays[f"{number}.box"] = np.array(face.box, dtype=np.int64)
            arrays[f"{number}.weights"] = face.weights
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], framings: dict[str, Framing]) -> Wav2LipAvatar:
        """ValueError unless every face is one ``make_face`` could have made for these framings."""
        faces = {}
        for number in sorted({name.split(".")[0] for name in arrays}, key=int):
            framing, pads, blend = json.loads(str(arrays[f"{number}.key"]))
            face_input, corners, weights = (arrays[f"{number}.{n}"] for n in ("face_input", "box", "weights"))
            if framing not in framings or blend not in ("lower_face", "box") or len(pads) != 4:
                raise ValueError(f"a Wav2Lip face for {framing!r}, pads {pads}, blend {blend!r}")
            if face_input.shape != (1, 6, FACE_SIZE, FACE_SIZE) or face_input.dtype != np.float32:
                raise ValueError(f"a Wav2Lip face input of {face_input.dtype} {face_input.shape}")
            if corners.shape != (4,) or corners.dtype.kind not in "iu":
                raise ValueError(f"a Wav2Lip face box of {corners.dtype} {corners.shape}")
            box = Box(*(int(v) for v in corners))
            width, height = framings[framing].size
            if not (0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height):
                raise ValueError(f"a Wav2Lip face box {tuple(box)} outside its {width}×{height} framing")
            if weights.shape != (box.height, box.width) or weights.dtype != np.float32:
                raise ValueError(f"Wav2Lip weights of {weights.dtype} {weights.shape} for a {tuple(box)} box")
            top, bottom, left, right = (int(p) for p in pads)
            faces[(framing, (top, bottom, left, right), blend)] = Wav2LipFace(face_input.copy(), box, weights.copy())
        return cls(faces)

    def face(self, avatar: AvatarState, options: Wav2LipOptions) -> Wav2LipFace:
        key = (options.framing, options.pads, options.blend)
        if key not in self.faces:
            box = face_box(avatar.landmarks, avatar.width, avatar.height, options.pads)
            self.faces[key] = make_face(avatar.framings[options.framing], box, avatar.landmarks, options.blend)
        return self.faces[key]
