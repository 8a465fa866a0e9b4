"""The page (web/) in Debian's Chromium, against the real gateway and embedded Triton on the reduced demo models.

Playwright drives /usr/bin/chromium (never a browser Playwright downloads). The microphone is Chromium's fake
capture device playing an espeak-ng sentence, so the whole live path runs: getUserMedia → AudioWorklet → 16 kHz
PCM over the WebSocket → gateway → Triton → fMP4 → Media Source Extensions. The page's state is read through its
test hook ``window.lipsync`` ({state, stats, errors, avatar, options, ready, end}); screenshots and the
downloaded MP4s go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import logging
import re
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from gateway_helpers import running_gateway
from PIL import Image
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright
from scipy.signal import resample_poly
from skimage import data
from test_engine_plugin import Level
from video_helpers import clip_bytes, moving_face

from gateway.engines import register, unregister
from gateway.errors import NoFaceFound
from gateway.settings import Settings
from gateway.triton.server import EmbeddedTriton
from lipsync.audio_io import decode_audio

LOG = logging.getLogger(__name__)
pytestmark = [pytest.mark.browser, pytest.mark.triton]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
FAKE_MIC_RATE = 48_000  # the rate Chromium's audio capture path runs at; its fake device reads 16-bit PCM WAV
# Rendering the reduced models on a shared 2-core machine runs at a few frames per second: generous limits.
STREAM_TIMEOUT_MS = 240_000
PLAYBACK_TIMEOUT_MS = 60_000


# ---------------------------------------------------------------------------------------------------------------
# The system under test


@pytest.fixture(scope="module")
def gateway_url(triton_server: EmbeddedTriton) -> Iterator[str]:
    """The real gateway behind its configured uvicorn on a free loopback port, serving web/ at /."""
    with running_gateway(Settings(triton_url=triton_server.grpc_url, demo=True)) as url:  # type: ignore[call-arg]
        yield url


@pytest.fixture
def level_gateway_url(triton_server: EmbeddedTriton) -> Iterator[str]:
    """A gateway that also has tests/test_engine_plugin.py's test engine, registered for this gateway alone."""
    register(Level)
    try:
        with running_gateway(Settings(triton_url=triton_server.grpc_url, demo=True)) as url:  # type: ignore[call-arg]
            yield url
    finally:
        unregister("level")


@pytest.fixture(scope="module")
def portrait_files(tmp_path_factory: pytest.TempPathFactory, astronaut_jpeg: bytes) -> dict[str, Path]:
    """A real photo with a face (astronaut) and one without (coffee), as JPEG files to pick in the page."""
    folder = tmp_path_factory.mktemp("portraits")
    (folder / "astronaut.jpg").write_bytes(astronaut_jpeg)
    Image.fromarray(data.coffee()).save(folder / "coffee.jpg", quality=92)
    return {"face": folder / "astronaut.jpg", "no_face": folder / "coffee.jpg"}


@pytest.fixture(scope="module")
def fake_microphone_wav(spoken_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spoken sentence as 16-bit mono PCM WAV at 48 kHz, for --use-file-for-fake-audio-capture."""
    with wave.open(str(spoken_wav)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    ratio = Fraction(FAKE_MIC_RATE, rate)
    resampled = resample_poly(pcm, ratio.numerator, ratio.denominator)
    out = tmp_path_factory.mktemp("microphone") / "sentence_48k.wav"
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(FAKE_MIC_RATE)
        wav.writeframes(np.clip(np.rint(resampled), -32768, 32767).astype("<i2").tobytes())
    return out


@pytest.fixture(scope="module")
def browser(fake_microphone_wav: Path) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), as .ci/run does")
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",  # grants the microphone without a prompt
        f"--use-file-for-fake-audio-capture={fake_microphone_wav}",  # loops the sentence
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


@dataclass
class WebPage:
    page: Page
    console_errors: list[str] = field(default_factory=list)

    def unexpected_console_errors(self, *allowed: str) -> list[str]:
        return [text for text in self.console_errors if not any(a in text for a in allowed)]


@pytest.fixture
def web(browser: Browser, gateway_url: str) -> Iterator[WebPage]:
    """A fresh page on the gateway's /, collecting console errors and uncaught exceptions."""
    # The page's CSP forbids eval, which Playwright's string predicates (wait_for_function) use: the test's own
    # probes bypass it; the page's scripts are 'self' modules either way (test_exposure checks the header).
    context = browser.new_context(viewport={"width": 1400, "height": 950}, accept_downloads=True, bypass_csp=True)
    page = context.new_page()
    result = WebPage(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            result.console_errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: result.console_errors.append(f"uncaught: {error}"))
    page.goto(f"{gateway_url}/")
    page.wait_for_function("window.lipsync !== undefined && window.lipsync.state === 'idle'")
    # The engines and their own options are built from GET /v1/info: the page is whole once it answered.
    page.wait_for_function("window.lipsync.info !== null")
    yield result
    context.close()


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def hook(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate("JSON.parse(JSON.stringify(window.lipsync))")
    return value


def wait_for_state(page: Page, *states: str, timeout_ms: float = STREAM_TIMEOUT_MS) -> str:
    page.wait_for_function("states => states.includes(window.lipsync.state)", arg=list(states), timeout=timeout_ms)
    state: str = page.evaluate("window.lipsync.state")
    return state


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


@contextlib.contextmanager
def csp_enforced_page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    """A page whose Content-Security-Policy is enforced (the ``web`` fixture bypasses it: its string predicates
    need eval), recording violations in ``window.cspViolations``; also the console errors and uncaught
    exceptions, in the list it yields with the page."""
    context = browser.new_context(viewport={"width": 1400, "height": 950})
    context.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));"
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    try:
        yield page, errors
    finally:
        context.close()


def choose_portrait(page: Page, path: Path) -> str:
    """Picks the file in the page; returns the state once the server answered ("ready" or "idle" on an error)."""
    errors_before = page.evaluate("window.lipsync.errors.length")
    page.get_by_label("Choose a portrait or a clip…").set_input_files(str(path))
    page.wait_for_function(
        "n => window.lipsync.state === 'ready' || window.lipsync.errors.length > n", arg=errors_before, timeout=60_000
    )
    state: str = page.evaluate("window.lipsync.state")
    return state


def video_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate(
        """() => {
            const v = document.querySelector("video");
            const q = v.getVideoPlaybackQuality();
            return {currentTime: v.currentTime, duration: v.duration, ended: v.ended,
                    error: v.error ? v.error.code : null,
                    decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames};
        }"""
    )
    return state


def download_mp4(page: Page, name: str) -> Path:
    with page.expect_download() as download:
        page.get_by_role("button", name="Download MP4").click()
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"web-{name}.mp4"
    download.value.save_as(str(path))
    return path


def decode_mp4(path: Path) -> tuple[int, np.ndarray]:
    """Video frame count and the mono audio (float32) of an MP4 file."""
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio.astype(np.float32)


def check_played_stream(web: WebPage, name: str, expected_frames: int) -> dict[str, Any]:
    """After the server's `end`: the video plays to the end, the stats were shown, the download is the stream."""
    page = web.page
    state = hook(page)
    assert state["errors"] == [], state["errors"]
    assert state["end"]["frames"] == expected_frames
    stats = state["stats"]
    # The time to the first frame is measured and on the page.
    assert stats["timeToFirstFrameMs"] > 0, stats
    assert page.locator("#stat-ttff").inner_text().endswith(("ms", "s"))
    # Stats were updated as fragments came (one `stats` per fragment) and shown.
    assert stats["statsMessages"] >= 2 and stats["serverFrames"] == expected_frames
    assert page.locator("#stat-frames").inner_text() == str(expected_frames)
    assert page.locator("#stat-fps").inner_text().endswith("fps")
    assert stats["segments"] >= 2

    # The whole stream plays through to the end (endOfStream was called) without a media error.
    page.wait_for_function("document.querySelector('video').ended", timeout=PLAYBACK_TIMEOUT_MS)
    video = video_state(page)
    assert video["error"] is None
    assert video["decoded"] > 0
    assert video["currentTime"] == pytest.approx(expected_frames / 25, abs=0.1)
    screenshot(page, f"{name}-done")

    mp4 = download_mp4(page, name)
    frames, audio = decode_mp4(mp4)
    assert frames == expected_frames
    # Audio covers the frames, plus the last partial frame's samples and the last AAC frame's padding at most.
    assert expected_frames * SAMPLES_PER_FRAME <= audio.size < (expected_frames + 1) * SAMPLES_PER_FRAME + 1024
    LOG.info("%s: %d frames, first frame after %.0f ms, stats %s", name, frames, stats["timeToFirstFrameMs"], stats)
    return {"audio": audio, "video": video, "stats": stats}


# ---------------------------------------------------------------------------------------------------------------
# Acceptance


def test_page_loads_accessible_and_labelled(web: WebPage) -> None:
    page = web.page
    screenshot(page, "empty")
    # Every control is a real element with an accessible name (a <label> or its text).
    for name in ("Start", "Stop", "Cancel", "Download MP4"):
        assert page.get_by_role("button", name=name, exact=True).count() == 1, name
    for name in ("Microphone (live)", "Audio file"):
        assert page.get_by_role("radio", name=name).count() == 1, name
    assert page.get_by_role("checkbox", name="Face enhancement (GFPGAN)").count() == 1
    assert page.get_by_role("slider", name="Expression scale").count() == 1
    assert page.get_by_role("spinbutton", name="Pose style (0–45)").count() == 1
    assert page.get_by_role("combobox", name="Head pose").count() == 1
    assert page.get_by_role("combobox", name="Engine").count() == 1
    assert page.get_by_role("combobox", name="Video shows").count() == 1
    assert page.locator("#status").inner_text() == "Choose a portrait to begin."
    # The server is a demo: the page says so before anything is chosen (it asked GET /v1/info on load).
    page.wait_for_function("window.lipsync.info !== null")
    assert page.get_by_role("alert").filter(has_text="DEMO").is_visible()
    assert page.get_by_role("button", name="Start").is_disabled()  # nothing to animate yet
    # The keyboard walks portrait → input choice → options, and the focus is drawn.
    page.get_by_label("Choose a portrait or a clip…").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.value") == "mic"  # the checked radio of the group
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "opt-mode"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    assert web.unexpected_console_errors() == []


def test_portrait_without_a_face_shows_the_server_message(web: WebPage, portrait_files: dict[str, Path]) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["no_face"]) == "idle"
    state = hook(page)
    message = NoFaceFound().message
    assert state["errors"] == [{"source": "server", "code": "no_face_found", "message": message}]
    assert state["state"] == "idle" and state["avatar"] is None
    alert = page.get_by_role("alert").filter(has_text=message)
    assert alert.is_visible()
    assert page.get_by_role("button", name="Start").is_disabled()
    screenshot(page, "no-face")
    # The browser itself logs the refused upload (HTTP 422); nothing else may be an error.
    assert web.unexpected_console_errors("status of 422") == []


@pytest.mark.slow
def test_microphone_stream_plays_live(web: WebPage, portrait_files: dict[str, Path]) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    avatar = hook(page)["avatar"]
    x0, y0, x1, y1 = avatar["box"]
    assert 0 <= x0 < x1 <= avatar["width"] and 0 <= y0 < y1 <= avatar["height"]
    assert f"from ({x0}, {y0}) to ({x1}, {y1})" in (page.locator("#portrait-canvas").get_attribute("aria-label") or "")
    assert page.locator("#demo-banner").is_visible()  # the demo server says demo: true
    assert page.get_by_role("radio", name="Microphone (live)").is_checked()

    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "streaming", "error", timeout_ms=60_000) == "streaming", hook(page)["errors"]
    page.wait_for_function("window.lipsync.stats.audioSecondsSent >= 2", timeout=60_000)
    screenshot(page, "microphone-streaming")
    page.get_by_role("button", name="Stop").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]

    # Live: the first frame was on screen while the speech was still streaming, long before the end.
    stats = hook(page)["stats"]
    assert stats["timeToFirstFrameMs"] < stats["streamEndMs"], stats
    seconds = stats["audioSecondsSent"]
    expected_frames = round(seconds * 16_000) // SAMPLES_PER_FRAME  # every sample captured reached the server
    assert expected_frames >= 50
    played = check_played_stream(web, "microphone", expected_frames)
    # The microphone's speech came back in the stream's audio (not silence).
    assert float(np.sqrt(np.mean(played["audio"] ** 2))) > 0.01
    assert web.unexpected_console_errors() == []


def test_the_page_measures_glass_to_glass_latency_from_the_frame_code(
    web: WebPage, portrait_files: dict[str, Path]
) -> None:
    """Microphone → server → the frame on screen: the page reads each displayed frame's number (options.frame_code)
    and times it against the capture of that frame's audio, on its own clock."""
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    page.locator("details.more summary").click()
    page.get_by_label("Measure glass-to-glass latency").check()
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "streaming", "error", timeout_ms=60_000) == "streaming", hook(page)["errors"]
    page.wait_for_function(
        "window.lipsync.stats.glassToGlass && window.lipsync.stats.glassToGlass.frames >= 25", timeout=120_000
    )
    page.get_by_role("button", name="Stop").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    state = hook(page)
    assert state["options"]["frame_code"] is True
    glass = state["stats"]["glassToGlass"]
    LOG.info("glass to glass (wav2lip, demo models, fMP4 page): %s", glass)
    # At least the look-ahead (≈ 0.25 s) and a chunk behind the speech; less than the whole stream.
    assert 250 < glass["medianMs"] <= glass["p95Ms"] < 1000 * state["stats"]["audioSecondsSent"] + 5000, glass
    assert "median" in page.locator("#stat-glass").inner_text()
    screenshot(page, "glass-to-glass")
    assert web.unexpected_console_errors() == []


@pytest.mark.slow
def test_audio_file_stream_plays_to_the_end(web: WebPage, portrait_files: dict[str, Path], spoken_wav: Path) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    # Options by keyboard: two steps up the expression slider, a pose style typed in.
    page.get_by_role("slider", name="Expression scale").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.get_by_role("spinbutton", name="Pose style (0–45)").fill("3")
    page.get_by_role("button", name="Start").focus()
    page.keyboard.press("Enter")
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    options = hook(page)["options"]
    assert options.pop("expression_scale") == pytest.approx(1.2)
    expected = {
        "engine": "sadtalker",
        "enhance": False,
        "seed": None,
        "chunk_frames": 8,
        "framing": "portrait",
        "pose": "still",
        "pose_style": 3,
        "blink": True,
    }
    assert options == expected
    expected_frames = decode_audio(spoken_wav.read_bytes()).size // SAMPLES_PER_FRAME
    check_played_stream(web, "file", expected_frames)
    assert web.unexpected_console_errors() == []


@pytest.mark.slow
def test_a_file_streams_with_the_wav2lip_engine(
    web: WebPage, portrait_files: dict[str, Path], spoken_wav: Path
) -> None:
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    # SadTalker's own options give way to Wav2Lip's.
    assert page.get_by_role("combobox", name="Head pose").is_hidden()
    assert page.get_by_role("combobox", name="Blend the new mouth").is_visible()
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    state = hook(page)
    assert state["options"]["engine"] == "wav2lip" and state["options"]["blend"] == "lower_face"
    assert "pose" not in state["options"]
    assert state["ready"]["engine"] == "wav2lip" and state["ready"]["model_lookahead_ms"] < 300
    check_played_stream(web, "file", decode_audio(spoken_wav.read_bytes()).size // SAMPLES_PER_FRAME)
    screenshot(page, "wav2lip")
    assert web.unexpected_console_errors() == []


@pytest.mark.slow
def test_a_clip_avatar_previews_its_first_frame_and_streams_with_an_engine_that_takes_videos(
    web: WebPage, portrait_files: dict[str, Path], spoken_wav: Path, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(clip_bytes(moving_face(20)))
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, clip) == "ready", hook(page)["errors"]
    assert hook(page)["avatar"]["kind"] == "video"
    assert page.locator("#avatar-info").inner_text().startswith("Clip of 0.8 s (20 frames). Face found")
    # The preview is the clip's first frame, decoded by the browser, with the face box the server found.
    canvas = page.get_by_role("img", name="Portrait preview, 384×384 pixels, with the detected face box")
    assert canvas.is_visible()
    # Only an engine that animates videos can be chosen for a clip, and one was chosen.
    engine = page.get_by_role("combobox", name="Engine")
    assert engine.input_value() == "wav2lip"
    assert page.locator("#opt-engine option[value=sadtalker]").is_disabled()
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    assert hook(page)["ready"]["engine"] == "wav2lip"
    check_played_stream(web, "file", decode_audio(spoken_wav.read_bytes()).size // SAMPLES_PER_FRAME)
    # A photo gives the photo engines back.
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    assert not page.locator("#opt-engine option[value=sadtalker]").is_disabled()
    assert web.unexpected_console_errors() == []


@pytest.mark.slow
def test_conversation_idles_speaks_a_file_burst_and_takes_an_interrupt(
    web: WebPage, portrait_files: dict[str, Path], spoken_wav: Path
) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Session").select_option("conversation")
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    page.locator("details.more summary").click()
    page.get_by_label("Measure glass-to-glass latency").check()  # times the interrupt below
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "streaming", "error") == "streaming", hook(page)["errors"]
    # The avatar appears and idles before anyone speaks.
    page.wait_for_function("window.lipsync.stats.timeToFirstFrameMs !== null", timeout=STREAM_TIMEOUT_MS)
    assert hook(page)["ready"]["mode"] == "conversation"
    page.get_by_role("button", name="Speak file").click()
    page.wait_for_function("window.lipsync.utterances.length > 0", timeout=STREAM_TIMEOUT_MS)
    assert hook(page)["utterances"][0]["utterance_id"] == "file-1"
    # Half a second of the utterance on screen (its frame numbers read back), none of it skipped: the server
    # sends speech ahead of the clock, and the player must not take that for falling behind.
    first = hook(page)["utterances"][0]["first_frame"]
    page.wait_for_function(
        "f => (window.lipsync.stats.displayedFrame ?? -1) >= f", arg=first + 12, timeout=STREAM_TIMEOUT_MS
    )
    assert hook(page)["stats"]["liveJumps"] == 0
    page.get_by_role("button", name="Interrupt").click()
    page.wait_for_function("window.lipsync.interrupted.length > 0", timeout=STREAM_TIMEOUT_MS)
    # The first idle frame the server named was displayed: the page timed it from the click. The idle video then
    # plays on (latency.js watches two seconds of it for freezes).
    page.wait_for_function(
        "window.lipsync.stats.glassToGlass && window.lipsync.stats.glassToGlass.interruptFreezesMs.length > 0",
        timeout=STREAM_TIMEOUT_MS,
    )
    glass = hook(page)["stats"]["glassToGlass"]
    interrupt_ms, freeze_ms = glass["interruptsMs"][0], glass["interruptFreezesMs"][0]
    LOG.info(
        "interrupt → first idle frame displayed (wav2lip, demo models, fMP4 page): %.0f ms, then the longest "
        "freeze %.0f ms",
        interrupt_ms,
        freeze_ms,
    )
    assert 0 < interrupt_ms < 10_000 and freeze_ms > 0
    assert hook(page)["interrupted"][0]["frame"] == hook(page)["interrupted"][0]["next_frame"]  # cut at once
    page.get_by_role("button", name="Stop").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    state = hook(page)
    kinds = [segment["kind"] for segment in state["end"]["timeline"]]
    assert kinds[0] == "silence" and "speech" in kinds  # idle first, then the burst
    speech = sum(s["end"] - s["start"] for s in state["end"]["timeline"] if s["kind"] == "speech")
    assert speech < decode_audio(spoken_wav.read_bytes()).size  # the interrupt cut it short
    screenshot(page, "conversation")
    assert state["errors"] == [] and web.unexpected_console_errors() == []


def test_undecodable_audio_file_shows_the_server_message(
    web: WebPage, portrait_files: dict[str, Path], tmp_path: Path
) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    not_audio = tmp_path / "notes.wav"
    not_audio.write_bytes(b"RIFF\x10\x00\x00\x00WAVEthis is not audio at all" * 10)
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(not_audio))
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "error", "done", timeout_ms=60_000) == "error"
    errors = hook(page)["errors"]
    assert [e["code"] for e in errors] == ["unsupported_audio"], errors
    assert errors[0]["message"].startswith("The audio could not be read")
    assert page.get_by_role("alert").filter(has_text=errors[0]["message"]).is_visible()
    assert page.get_by_role("button", name="Start").is_enabled()  # a new try is possible
    screenshot(page, "bad-audio")
    assert web.unexpected_console_errors() == []


def test_cancel_abandons_the_session(web: WebPage, portrait_files: dict[str, Path]) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "streaming", "error", timeout_ms=60_000) == "streaming", hook(page)["errors"]
    page.get_by_role("button", name="Cancel").click()
    assert hook(page)["state"] == "cancelled"
    assert hook(page)["errors"] == []  # closing on purpose is not an error
    assert page.get_by_role("button", name="Start").is_enabled()
    assert page.get_by_role("button", name="Cancel").is_disabled()
    assert page.evaluate("document.getElementById('mic-level').value") == 0  # the microphone was released
    assert web.unexpected_console_errors() == []


def test_the_page_streams_under_its_own_content_security_policy(
    browser: Browser, gateway_url: str, portrait_files: dict[str, Path]
) -> None:
    """The other tests bypass the CSP (their string predicates need eval); here it is enforced, and the page —
    modules, the microphone's AudioWorklet, MediaSource video from a blob: URL, its socket — works without a
    single violation. Waits use locators (Playwright's own world, outside the page's CSP)."""
    with csp_enforced_page(browser) as (page, errors):
        response = page.goto(f"{gateway_url}/")
        assert response is not None and "frame-ancestors 'self'" in response.headers["content-security-policy"]
        expect(page.locator("#demo-banner")).to_be_visible()  # the page's module ran and asked /v1/info
        page.get_by_label("Choose a portrait or a clip…").set_input_files(str(portrait_files["face"]))
        start = page.get_by_role("button", name="Start")
        expect(start).to_be_enabled(timeout=60_000)
        start.click()
        expect(page.locator("#stat-frames")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=60_000)
        page.get_by_role("button", name="Stop").click()
        expect(start).to_be_enabled(timeout=STREAM_TIMEOUT_MS)
        decoded = page.evaluate("document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames")
        assert decoded > 0  # MediaSource played the stream
        assert page.evaluate("window.cspViolations") == []
        assert errors == []


def test_a_registered_engine_gets_its_own_controls_on_the_page(
    browser: Browser, level_gateway_url: str, portrait_files: dict[str, Path], spoken_wav: Path
) -> None:
    """The page knows an engine and its own options from GET /v1/info alone: the test engine's controls appear,
    and what they are set to is sent, typed. The answer is cut down in the browser to that engine only, as a
    gateway serving one engine gives; the page's CSP is enforced (the controls are built by its module)."""

    def one_engine(route: Route) -> None:
        response = route.fetch()
        info = response.json()
        info["engines"] = ["level"]
        info["engine_options"] = {"level": info["engine_options"]["level"]}
        route.fulfill(response=response, json=info)

    with csp_enforced_page(browser) as (page, errors):
        page.route("**/v1/info", one_engine)
        page.goto(f"{level_gateway_url}/")
        engine = page.get_by_role("combobox", name="Engine")
        expect(engine.locator("option")).to_have_text(["Level — a square as loud as the speech"])
        expect(engine).to_have_value("level")
        bar = page.get_by_role("combobox", name="Bar colour")
        expect(bar).to_be_visible()
        expect(bar).to_have_value("green")  # the model's default
        assert page.get_by_role("combobox", name="Head pose").count() == 0  # no other engine's controls
        bar.select_option(label="Red")
        page.locator("details.more summary").click()  # the engine's "more" option is there
        gain = page.get_by_role("slider", name="Gain")
        expect(gain).to_have_value("4")
        gain.focus()
        page.keyboard.press("ArrowLeft")  # one step: a hundredth of (0, 8]
        expect(page.locator("#opt-gain-value")).to_have_text("3.92")

        page.get_by_label("Choose a portrait or a clip…").set_input_files(str(portrait_files["face"]))
        page.get_by_role("radio", name="Audio file").check()
        page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
        start = page.get_by_role("button", name="Start")
        expect(start).to_be_enabled(timeout=60_000)
        start.click()
        expect(page.locator("body")).to_have_attribute("data-state", re.compile("^(done|error)$"), timeout=60_000)
        state = hook(page)
        assert state["errors"] == [] and state["state"] == "done"
        options = state["options"]
        assert options.pop("gain") == pytest.approx(3.92)
        common = {"enhance": False, "seed": None, "chunk_frames": 8, "framing": "portrait"}
        assert options == {"engine": "level", "bar": "red", **common}
        assert state["ready"]["engine"] == "level"
        assert state["end"]["frames"] == decode_audio(spoken_wav.read_bytes()).size // SAMPLES_PER_FRAME
        assert page.evaluate("window.cspViolations") == []
        assert errors == []
