"""Paste-back into the portrait (only the box changes) and the enhancer's image functions."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from gateway.avatars.portrait import Box
from gateway.engines.sadtalker.crop import CroppedPortrait as Avatar
from gateway.engines.sadtalker.crop import prepare_avatar
from gateway.media.pasteback import (
    ENHANCER_SIZE,
    MaskedPasteBack,
    PasteBack,
    feather_weights,
    from_enhancer,
    paste_back,
    resize_faces,
    to_enhancer,
)


@pytest.fixture(scope="module")
def avatar() -> Avatar:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, "PNG")
    return prepare_avatar(buffer.getvalue())


def outside(frame: np.ndarray, box: Box) -> np.ndarray:
    mask = np.ones(frame.shape[:2], bool)
    mask[box.y0 : box.y1, box.x0 : box.x1] = False
    return frame[mask]


def test_face_of_the_box_size_comes_back_exactly(avatar: Avatar) -> None:
    """When the face is already the box's size, resizing is a copy and blending a pixel with itself is exact."""
    frame = np.asarray(avatar.image)
    box = Box(avatar.box.x0, avatar.box.y0, avatar.box.x0 + 256, avatar.box.y0 + 256)
    face = frame[box.y0 : box.y1, box.x0 : box.x1].copy()
    out = paste_back(frame, face, box)
    assert out is not frame
    np.testing.assert_array_equal(out, frame)


def test_unchanged_crop_reproduces_the_portrait(avatar: Avatar) -> None:
    frame = np.asarray(avatar.image)
    b = avatar.box
    out = paste_back(frame, np.asarray(avatar.crop), b)
    np.testing.assert_array_equal(outside(out, b), outside(frame, b))  # bit-identical outside the box
    inside = out[b.y0 : b.y1, b.x0 : b.x1].astype(np.int16) - frame[b.y0 : b.y1, b.x0 : b.x1]
    # Not bit-exact inside: the crop is the 182² box enlarged to 256² (bicubic) and paste-back shrinks it back
    # (bicubic). The two resamplings sit on different grids, so they are not exact inverses: flat and smooth
    # areas come back within a level or two, a few pixels on sharp edges (hair, eyelashes) differ by more.
    error = np.abs(inside)
    assert error.mean() < 0.6
    assert (error <= 1).mean() > 0.9
    assert (error <= 2).mean() > 0.97
    psnr = 10 * np.log10(255.0**2 / np.mean(inside.astype(np.float64) ** 2))
    assert psnr > 45.0
    # The interior is exactly the resized face; the band blends towards the original.
    interior = slice(b.height // 4, 3 * b.height // 4), slice(b.width // 4, 3 * b.width // 4)
    resized = cv2.resize(np.asarray(avatar.crop), (b.width, b.height), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(out[b.y0 : b.y1, b.x0 : b.x1][interior], resized[interior])


def test_a_different_face_changes_only_the_box_with_a_feathered_edge(avatar: Avatar) -> None:
    frame = np.asarray(avatar.image)
    b = avatar.box
    face = np.zeros((256, 256, 3), np.uint8)
    out = paste_back(frame, face, b)
    np.testing.assert_array_equal(outside(out, b), outside(frame, b))
    region = out[b.y0 : b.y1, b.x0 : b.x1].astype(np.int32)
    original = frame[b.y0 : b.y1, b.x0 : b.x1].astype(np.int32)
    np.testing.assert_array_equal(region[b.height // 2, b.width // 2], 0)  # centre: the face
    # The outermost pixels are mostly the original (weight ≈ 0.005 of the face); no hard seam.
    assert np.abs(region[0] - original[0]).max() <= 2
    assert np.abs(region[:, -1] - original[:, -1]).max() <= 2
    assert np.all(region <= original)  # every pixel lies between the original and the (black) face
    assert not np.array_equal(region, original)


def test_reused_frame_buffer_is_idempotent(avatar: Avatar) -> None:
    paster = PasteBack.for_avatar(avatar)
    rng = np.random.default_rng(0)
    face_a, face_b = (rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2))
    buffer = paster.new_frame()
    assert paster(face_a, out=buffer) is buffer
    paster(face_b, out=buffer)
    np.testing.assert_array_equal(buffer, paster(face_b))
    np.testing.assert_array_equal(buffer, paste_back(np.asarray(avatar.image), face_b, avatar.box))
    # The avatar's portrait itself is never written to.
    assert not avatar.image.flags.writeable


def test_enhanced_512_face_pastes_into_the_same_box(avatar: Avatar) -> None:
    b = avatar.box
    face512 = resize_faces(np.asarray(avatar.crop), ENHANCER_SIZE)
    out = PasteBack.for_avatar(avatar)(face512)
    np.testing.assert_array_equal(outside(out, b), outside(np.asarray(avatar.image), b))
    inside = out[b.y0 : b.y1, b.x0 : b.x1].astype(np.int16) - avatar.image[b.y0 : b.y1, b.x0 : b.x1]
    # 512 → 182 is a 2.8× reduction: area averaging (no aliasing on real 512² detail) blurs a little.
    assert np.abs(inside).mean() < 1.5


def test_feather_weights() -> None:
    w = feather_weights(200, 100, feather=0.1)  # a 10 px ramp on every side
    assert w.shape == (100, 200)
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w[10:90, 10:190], 1.0)
    assert 0 < w[0, 100] < 0.01
    np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric
    assert np.all(np.diff(w[50, :100]) >= 0)  # rising towards the middle
    np.testing.assert_array_equal(feather_weights(50, 40, feather=0.0), 1.0)
    with pytest.raises(ValueError, match="feather"):
        feather_weights(10, 10, feather=0.8)


def test_hard_edge_paste_is_the_resized_face(avatar: Avatar) -> None:
    b = avatar.box
    face = np.full((256, 256, 3), 77, np.uint8)
    out = paste_back(np.asarray(avatar.image), face, b, feather=0.0)
    np.testing.assert_array_equal(out[b.y0 : b.y1, b.x0 : b.x1], 77)


def test_bad_arguments(avatar: Avatar) -> None:
    frame = np.asarray(avatar.image)
    with pytest.raises(ValueError, match="not inside"):
        PasteBack(frame, Box(400, 400, 600, 600))
    with pytest.raises(ValueError, match="face must be"):
        PasteBack.for_avatar(avatar)(np.zeros((256, 256), np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        PasteBack.for_avatar(avatar)(np.zeros((256, 256, 3), np.uint8), out=np.zeros((10, 10, 3), np.uint8))


def test_masked_paste_blends_by_its_weights_and_checks_like_the_box_paste(avatar: Avatar) -> None:
    frame = np.asarray(avatar.image)
    b = avatar.box
    weights = np.zeros((b.height, b.width), np.float32)
    weights[b.height // 2 :] = 1.0  # only the lower half of the box takes the face
    paste = MaskedPasteBack(frame, b, weights)
    face = np.full((b.height, b.width, 3), 200, np.uint8)
    out = paste(face, paste.new_frame())
    region = out[b.y0 : b.y1, b.x0 : b.x1]
    np.testing.assert_array_equal(region[b.height // 2 :], 200)
    np.testing.assert_array_equal(region[: b.height // 2], frame[b.y0 : b.y0 + b.height // 2, b.x0 : b.x1])
    np.testing.assert_array_equal(outside(out, b), outside(frame, b))
    with pytest.raises(ValueError, match="weights must be"):
        MaskedPasteBack(frame, b, weights[1:])
    with pytest.raises(ValueError, match="not inside"):
        MaskedPasteBack(frame, Box(400, 400, 600, 600), np.ones((200, 200), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        paste(face, out=np.zeros((10, 10, 3), np.uint8))


def test_enhancer_input_and_output() -> None:
    rng = np.random.default_rng(1)
    faces512 = rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    x = to_enhancer(faces512)
    assert x.shape == (2, 3, 512, 512)
    assert x.dtype == np.float32
    assert x.min() >= -1.0
    assert x.max() <= 1.0
    np.testing.assert_allclose(x[1, 2, 7, 9], faces512[1, 7, 9, 2] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(from_enhancer(x), faces512)  # normalisation round trip is exact
    # Out-of-range network output clamps to black and white.
    extreme = np.full((1, 3, 512, 512), 3.0, np.float32)
    extreme[:, 0] = -3.0
    back = from_enhancer(extreme)
    assert back.shape == (1, 512, 512, 3)
    assert (back[..., 0] == 0).all()
    assert (back[..., 1:] == 255).all()


def test_enhancer_resizes_256_faces_and_back() -> None:
    face = np.ascontiguousarray(skimage.data.astronaut()[:256, 128:384])
    x = to_enhancer(face)  # a single face gets a batch axis
    assert x.shape == (1, 3, 512, 512)
    expected = cv2.resize(face, (512, 512), interpolation=cv2.INTER_LINEAR)  # what GFPGANer does to aligned faces
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected / 127.5 - 1.0, atol=1e-6)
    back = from_enhancer(x, size=256)
    assert back.shape == (1, 256, 256, 3)
    assert np.abs(back[0].astype(np.int16) - face).mean() < 3.0  # 2× up then down: a mild blur
