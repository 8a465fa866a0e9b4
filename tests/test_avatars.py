"""Portrait → avatar on a real photo (skimage's astronaut): decoding, dlib face, SadTalker's crop, alignment, errors."""

from __future__ import annotations

import asyncio
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

import gateway
from gateway.avatars import portrait
from gateway.avatars.portrait import DEFAULT_LIMITS, AvatarLimits, decode_image, detect_face
from gateway.avatars.portrait import face_square as sadtalker_crop_box
from gateway.avatars.store import AvatarState, AvatarStore
from gateway.engines.sadtalker.crop import CroppedPortrait as Avatar
from gateway.engines.sadtalker.crop import prepare_avatar
from gateway.errors import FaceTooSmall, ImageTooLarge, NoFaceFound, UnsupportedImage
from gateway.transport.routes.avatars import AvatarInfo

STANDARD_LANDMARKS = Path(gateway.__file__).parent / "engines" / "sadtalker" / "data" / "similarity_Lm3D_all.json"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def encode(image: np.ndarray, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.ascontiguousarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def png(astronaut: np.ndarray) -> bytes:
    return encode(astronaut, "PNG")


@pytest.fixture(scope="module")
def avatar(png: bytes) -> Avatar:
    return prepare_avatar(png)


# ---------------------------------------------------------------------------------------------------------------
# SadTalker's box, transcribed step by step from upstream (src/utils/croper.py Preprocesser.align_face and crop,
# src/utils/preprocess.py CropAndExtract.generate), independently of gateway.avatars.portrait.


def upstream_crop_box(lm: np.ndarray, width: int, height: int, xsize: int = 512) -> tuple[int, int, int, int]:
    eye_left = np.mean(lm[36:42], axis=0)
    eye_right = np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5  # lm_mouth_outer[0] and [6]
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = np.hypot(*x) * 2
    # Upstream shrinks the photo first when the quad is ≥ 4·xsize; its box is then in shrunk pixels (not tested).
    assert int(np.floor(qsize / xsize * 0.5)) <= 1
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (
        int(np.floor(min(quad[:, 0]))),
        int(np.floor(min(quad[:, 1]))),
        int(np.ceil(max(quad[:, 0]))),
        int(np.ceil(max(quad[:, 1]))),
    )
    crop = (
        max(crop[0] - border, 0),
        max(crop[1] - border, 0),
        min(crop[2] + border, width),
        min(crop[3] + border, height),
    )
    if crop[2] - crop[0] < width or crop[3] - crop[1] < height:
        quad -= crop[0:2]
    q = (quad + 0.5).flatten()
    lx = max(min(q[0], q[2]), 0)
    ly = max(min(q[1], q[7]), 0)
    rx = min(max(q[4], q[6]), width)
    ry = min(max(q[3], q[5]), width)  # sic: upstream clamps by the width; irrelevant when width ≥ the crop height
    lx, ly, rx, ry = int(lx), int(ly), int(rx), int(ry)
    # crop() slices img[cly:cry, clx:crx][ly:ry, lx:rx]: the pixels the network sees stop at the crop's edge.
    rx, ry = min(rx, crop[2] - crop[0]), min(ry, crop[3] - crop[1])
    return crop[0] + lx, crop[1] + ly, crop[0] + rx, crop[1] + ry


# ---------------------------------------------------------------------------------------------------------------
# The face and the crop


def test_face_found_with_landmarks_inside_the_crop_box(avatar: Avatar, astronaut: np.ndarray) -> None:
    assert avatar.faces_seen == 1
    assert avatar.landmarks.shape == (68, 2)
    x, y = avatar.landmarks[:, 0], avatar.landmarks[:, 1]
    b = avatar.box
    assert np.all((b.x0 <= x) & (x < b.x1) & (b.y0 <= y) & (y < b.y1)), (b, avatar.landmarks)
    # Her eyes are around rows 98-107, columns 195-255 of the 512² photo.
    eyes = avatar.landmarks[36:48]
    assert np.all((eyes[:, 0] > 190) & (eyes[:, 0] < 260) & (eyes[:, 1] > 90) & (eyes[:, 1] < 115))
    assert avatar.image.shape == astronaut.shape
    np.testing.assert_array_equal(avatar.image, astronaut)
    assert avatar.crop.shape == (256, 256, 3)
    assert avatar.crop.dtype == np.uint8
    assert avatar.aligned.shape == (224, 224, 3)


def test_crop_box_is_sadtalkers_rule_on_these_landmarks(avatar: Avatar) -> None:
    height, width = avatar.image.shape[:2]
    assert tuple(avatar.box) == upstream_crop_box(avatar.landmarks.copy(), width, height)
    # The crop is that box resized to 256² (enlarged here: bicubic, where upstream uses bilinear).
    b = avatar.box
    expected = cv2.resize(avatar.image[b.y0 : b.y1, b.x0 : b.x1], (256, 256), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(avatar.crop, expected)


def test_crop_rule_matches_upstream_on_transformed_landmarks(avatar: Avatar) -> None:
    """Rotated, scaled, shifted faces, partly off the edge: the pure rule equals upstream's steps everywhere."""
    rng = np.random.default_rng(0)
    base = avatar.landmarks - avatar.landmarks.mean(axis=0)
    for _ in range(300):
        angle = rng.uniform(-0.6, 0.6)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        height = int(rng.integers(200, 2000))
        width = int(rng.integers(height, 2 * height + 1))  # width ≥ height: upstream's width clamp stays moot
        scale = rng.uniform(0.3, 4.0)
        centre = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height])
        lm = base @ rotation.T * scale + centre + rng.normal(0, 0.5, base.shape)
        box = sadtalker_crop_box(lm, width, height)
        if box.width <= 0 or box.height <= 0:
            continue  # face entirely off the picture
        assert tuple(sadtalker_crop_box(lm, width, height)) == upstream_crop_box(lm.copy(), width, height)


def test_deterministic(png: bytes, avatar: Avatar) -> None:
    again = prepare_avatar(png)
    assert again.key == avatar.key
    for name in ("image", "crop", "aligned", "align_params", "landmarks"):
        np.testing.assert_array_equal(getattr(again, name), getattr(avatar, name), err_msg=name)
    assert again.box == avatar.box
    assert prepare_avatar(png + b"\0").key != avatar.key  # the hash covers the bytes (PNG ignores trailing data)


def test_concurrent_calls_give_identical_results(png: bytes, avatar: Avatar) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: prepare_avatar(png), range(2)))
    for other in results:
        assert other.box == avatar.box
        np.testing.assert_array_equal(other.crop, avatar.crop)


def upstream_align(image: np.ndarray, lm68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upstream's load_lm3d + extract_5p + POS + resize_n_crop_img (src/face3d/util), transcribed step by step."""
    standard = np.asarray(json.loads(STANDARD_LANDMARKS.read_text())["lm"])
    idx = np.array([31, 37, 40, 43, 46, 49, 55]) - 1

    def five(lm: np.ndarray) -> np.ndarray:
        p = np.stack([lm[idx[0]], np.mean(lm[idx[[1, 2]]], 0), np.mean(lm[idx[[3, 4]]], 0), lm[idx[5]], lm[idx[6]]])
        return p[[1, 2, 0, 3, 4]]

    lm3d = five(standard)
    pil = Image.fromarray(image)
    w0, h0 = pil.size
    lm = lm68.copy()
    lm[:, -1] = h0 - 1 - lm[:, -1]
    xp, x = five(lm).transpose(), lm3d.transpose()
    npts = xp.shape[1]
    A = np.zeros([2 * npts, 8])
    A[0 : 2 * npts - 1 : 2, 0:3] = x.transpose()
    A[0 : 2 * npts - 1 : 2, 3] = 1
    A[1 : 2 * npts : 2, 4:7] = x.transpose()
    A[1 : 2 * npts : 2, 7] = 1
    k, *_ = np.linalg.lstsq(A, np.reshape(xp.transpose(), [2 * npts, 1]), rcond=None)
    s = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2
    t = np.stack([k[3], k[7]], axis=0)
    s = 102.0 / s
    w = (w0 * s).astype(np.int32)
    h = (h0 * s).astype(np.int32)
    left = (w / 2 - 112.0 + float((t[0] - w0 / 2) * s)).astype(np.int32)
    up = (h / 2 - 112.0 + float((h0 / 2 - t[1]) * s)).astype(np.int32)
    out = pil.resize((int(w), int(h)), resample=Image.Resampling.BICUBIC)
    out = out.crop((int(left), int(up), int(left) + 224, int(up) + 224))
    return np.array(out), np.array([w0, h0, s, float(t[0, 0]), float(t[1, 0])])


def test_alignment_is_upstreams_on_the_crop(avatar: Avatar) -> None:
    b = avatar.box
    # Landmarks into the 256² crop: pixel centres scale about the box (cv2.resize's convention).
    lm_crop = (avatar.landmarks - [b.x0, b.y0] + 0.5) * [256 / b.width, 256 / b.height] - 0.5
    aligned, params = upstream_align(np.asarray(avatar.crop), lm_crop)
    np.testing.assert_allclose(avatar.align_params, params, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(avatar.aligned, aligned)


def test_aligned_face_is_centred_at_102_px_per_unit(avatar: Avatar) -> None:
    """Detect the face again in the 224² input: eyes where the standard face puts them, give or take the fit."""
    standard = np.asarray(json.loads(STANDARD_LANDMARKS.read_text())["lm"])
    eyes_3d = np.stack([standard[[36, 39]].mean(0), standard[[42, 45]].mean(0)])
    template = np.stack([112 + 102 * eyes_3d[:, 0], 112 - 102 * eyes_3d[:, 1]], axis=1)
    lm = detect_face(np.ascontiguousarray(avatar.aligned)).landmarks
    eyes = np.stack([lm[[36, 39]].mean(0), lm[[42, 45]].mean(0)])
    # The fit is an affine camera through 5 points of a smiling, slightly turned face, so not exact; a wrong
    # scale, flip or centring would be off by tens of pixels.
    assert np.linalg.norm(eyes - template, axis=1).max() < 12.0, (eyes, template)
    eye_distance, template_distance = np.linalg.norm(eyes[1] - eyes[0]), np.linalg.norm(template[1] - template[0])
    assert abs(eye_distance / template_distance - 1) < 0.1


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize(("orientation", "rot90_k"), [(3, 2), (6, 1), (8, -1)])
def test_exif_orientation_is_applied(astronaut: np.ndarray, orientation: int, rot90_k: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(np.rot90(astronaut, rot90_k))
    np.testing.assert_array_equal(decode_image(encode(stored, "PNG", exif=exif)), astronaut)


def test_exif_rotated_jpeg_gives_the_same_crop(astronaut: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels are the picture turned 90° anticlockwise
    upright = prepare_avatar(encode(astronaut, "JPEG", quality=95))
    rotated = prepare_avatar(encode(np.ascontiguousarray(np.rot90(astronaut, 1)), "JPEG", quality=95, exif=exif))
    assert rotated.image.shape == upright.image.shape
    # JPEG blocks see the rotated pixels differently, so allow a pixel.
    assert np.abs(np.subtract(rotated.box, upright.box)).max() <= 1, (rotated.box, upright.box)
    assert np.abs(rotated.landmarks - upright.landmarks).max() <= 2


def test_rgba_png_gives_the_same_crop(astronaut: np.ndarray, avatar: Avatar) -> None:
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    other = prepare_avatar(encode(rgba, "PNG"))
    assert other.box == avatar.box
    np.testing.assert_array_equal(other.crop, avatar.crop)


def test_image_modes_become_rgb() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, 0, 3] = 255
    rgb = decode_image(encode(rgba, "PNG"))
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[1, 1]) == (255, 255, 255)  # transparent → white backdrop
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    np.testing.assert_array_equal(decode_image(encode(grey, "PNG")), np.repeat(grey[..., None], 3, axis=2))
    grey16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369).astype(np.uint16)  # 0 … 65535
    decoded16 = decode_image(encode(grey16, "PNG"))
    np.testing.assert_array_equal(decoded16[..., 0], np.rint(grey16 / 257.0).astype(np.uint8))
    palette = Image.fromarray(np.full((4, 4, 3), (200, 100, 50), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    assert tuple(decode_image(buffer.getvalue())[2, 2]) == (200, 100, 50)


def test_phone_multi_picture_jpeg_is_accepted(astronaut: np.ndarray) -> None:
    first = Image.fromarray(astronaut)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "MPO"
    assert decode_image(buffer.getvalue()).shape == astronaut.shape


def test_large_photo_is_detected_on_a_reduced_copy(astronaut: np.ndarray, avatar: Avatar) -> None:
    """A 2048² photo is searched at 1024² (DETECT_MAX_SIDE); landmarks and box come back in full resolution."""
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    other = prepare_avatar(encode(big, "JPEG", quality=95))
    assert other.image.shape == (2048, 2048, 3)
    # Landmarks are predicted on the full-resolution picture: 4× the 512² ones, give or take the predictor.
    assert np.abs(other.landmarks / 4 - avatar.landmarks).mean() < 1.5
    assert np.abs(np.asarray(other.box) / 4 - np.asarray(avatar.box)).max() < 3


def test_webp_lossless_decodes_exactly(astronaut: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_image(encode(astronaut, "WEBP", lossless=True)), astronaut)


# ---------------------------------------------------------------------------------------------------------------
# Two faces


def test_two_faces_pick_the_larger(astronaut: np.ndarray, avatar: Avatar) -> None:
    canvas = np.full((512, 768, 3), 128, np.uint8)
    canvas[128:384, :256] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)  # small one first
    canvas[:, 256:] = astronaut
    both = prepare_avatar(encode(canvas, "PNG"))
    assert both.faces_seen == 2
    assert np.all(both.landmarks[:, 0] >= 256)
    # The same face as in the plain photo, shifted; dlib's pyramid sees a wider canvas, so allow a few pixels.
    shifted = np.subtract(both.box, (256, 0, 256, 0))
    assert np.abs(shifted - np.asarray(avatar.box)).max() <= 3, (both.box, avatar.box)


# ---------------------------------------------------------------------------------------------------------------
# Which detector finds the face: HOG, else dlib's CNN


@pytest.fixture
def cnn_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The long sides of the images the CNN detector ran on (it costs seconds: only where HOG found nothing)."""
    runs: list[int] = []
    real = portrait._cnn_model()

    def detect(image: np.ndarray, upsample: int) -> object:
        runs.append(max(image.shape[:2]))
        assert upsample == 0  # one upsampling costs 4× the time
        return real.detector(image, upsample)

    monkeypatch.setattr(portrait, "_cnn_model", lambda: portrait._Cnn(detect, real.lock))
    return runs


def stored(data: bytes) -> AvatarState:
    return asyncio.run(AvatarStore(DEFAULT_LIMITS, capacity_bytes=1 << 30).add(data))


def test_a_face_hog_misses_is_found_by_the_cnn(cnn_runs: list[int]) -> None:
    camera = np.ascontiguousarray(skimage.data.camera())  # greyscale 512²: HOG finds no face at any upsampling
    state = stored(encode(camera, "PNG"))
    assert cnn_runs == [512]
    assert state.detector == "cnn"
    assert AvatarInfo.model_validate({**state.describe(), "demo": False}).detector == "cnn"  # POST /v1/avatars
    assert state.faces_seen == 1
    box = state.box  # the face square around the cameraman's face, in the upper half of the photo
    assert 0 <= box.x0 < box.x1 <= 512 and 0 <= box.y0 < box.y1 <= 256, box
    assert 40 <= box.width <= 200 and 40 <= box.height <= 200, box
    # His eyes are around row 145, columns 200-240; his mouth below them.
    eyes, mouth = state.landmarks[36:48], state.landmarks[48:68]
    assert np.all((eyes[:, 0] > 190) & (eyes[:, 0] < 250) & (eyes[:, 1] > 130) & (eyes[:, 1] < 160)), eyes
    assert 0 < mouth[:, 1].mean() - eyes[:, 1].mean() < 60


def test_a_face_hog_finds_never_runs_the_cnn(png: bytes, cnn_runs: list[int]) -> None:
    state = stored(png)
    assert (state.detector, state.describe()["detector"], state.faces_seen) == ("hog", "hog", 1)
    assert cnn_runs == []


# ---------------------------------------------------------------------------------------------------------------
# Errors a user can act on


def test_no_face_in_a_photo_without_people(cnn_runs: list[int]) -> None:
    with pytest.raises(NoFaceFound, match="No face was found in the image") as info:
        prepare_avatar(encode(np.ascontiguousarray(skimage.data.coffee()), "JPEG"))
    assert info.value.code == "no_face_found"
    yy, xx = np.mgrid[0:300, 0:400]
    gradient = np.dstack([xx * 255 // 399, yy * 255 // 299, np.full_like(xx, 128)]).astype(np.uint8)
    with pytest.raises(NoFaceFound, match="No face was found"):
        prepare_avatar(encode(gradient, "PNG"))
    assert cnn_runs == [512, 400]  # both detectors looked (coffee's 600 px side shrunk to the CNN's 512)
    # A picture a few pixels across: no detector can find a face in it, and none fails on it (dlib's CNN raises
    # on pictures smaller than its filters).
    with pytest.raises(NoFaceFound):
        prepare_avatar(encode(np.full((8, 8, 3), 128, np.uint8), "PNG"))
    assert cnn_runs == [512, 400]


def test_face_too_small_names_the_minimum(astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (205, 205), interpolation=cv2.INTER_AREA)  # her face is ~37 px across
    with pytest.raises(FaceTooSmall, match=r"too small: \d+ pixels across; the minimum is 64 pixels") as info:
        prepare_avatar(encode(small, "PNG"))
    assert info.value.code == "face_too_small"
    assert 30 <= info.value.face_px < 64
    assert prepare_avatar(encode(small, "PNG"), limits=AvatarLimits(min_face_px=30)).faces_seen == 1


def test_corrupt_file(png: bytes, astronaut: np.ndarray) -> None:
    jpeg = encode(astronaut, "JPEG")
    with pytest.raises(UnsupportedImage, match="The JPEG file is corrupt or truncated") as info:
        decode_image(jpeg[: len(jpeg) // 2])
    assert info.value.code == "unsupported_image"
    with pytest.raises(UnsupportedImage, match="The PNG file is corrupt or truncated"):
        decode_image(png[:1000])


def test_unreadable_and_unsupported_formats(astronaut: np.ndarray) -> None:
    with pytest.raises(UnsupportedImage, match=r"not an image we can read\. Send a JPEG, PNG or WebP image"):
        decode_image(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UnsupportedImage, match="The file is empty"):
        decode_image(b"")
    for fmt in ("GIF", "BMP", "TIFF"):
        with pytest.raises(UnsupportedImage, match=f"{fmt} images are not supported. Send a JPEG, PNG or WebP"):
            decode_image(encode(astronaut, fmt))


def test_too_many_pixels_is_refused_from_the_header(png: bytes) -> None:
    limits = AvatarLimits(max_pixels=100_000)
    message = r"The image is too large: 512×512 = 262,144 pixels; the limit is 100,000 pixels\."
    with pytest.raises(ImageTooLarge, match=message) as info:
        prepare_avatar(png, limits=limits)
    assert info.value.code == "image_too_large"
    # The pixel data is never decoded: a truncated file with a large header still gets the size message.
    with pytest.raises(ImageTooLarge, match=message):
        decode_image(png[:200], limits)


def test_too_many_bytes(png: bytes) -> None:
    limit = len(png) - 1
    with pytest.raises(
        ImageTooLarge, match=rf"The file is too large: {len(png):,} bytes; the limit is {limit:,} bytes"
    ):
        prepare_avatar(png, limits=AvatarLimits(max_bytes=limit))


# ---------------------------------------------------------------------------------------------------------------
# The record


def test_avatar_arrays_are_read_only(avatar: Avatar) -> None:
    with pytest.raises(ValueError, match="read-only"):
        avatar.image[0, 0, 0] = 1
