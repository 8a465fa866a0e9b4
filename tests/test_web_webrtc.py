"""The page (web/) over its WebRTC transport, in Debian's Chromium, against the real gateway and embedded Triton.

The same page as tests/test_web.py with the option Transport = WebRTC: the browser posts its SDP offer to
``POST /v1/webrtc/offer``, sends the fake microphone's track (or a file's PCM on the data channel) and plays the
server's H.264 and Opus tracks as the video's ``srcObject``. The browser's own WebRTC figures (getStats) are read
through the test hook as ``window.lipsync.stats.webrtc``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import test_web
from playwright.sync_api import Browser, Page, expect
from test_web import STREAM_TIMEOUT_MS, WebPage, choose_portrait, csp_enforced_page, hook, screenshot, wait_for_state

from gateway.errors import BadMessage
from lipsync.audio_io import decode_audio

LOG = logging.getLogger(__name__)
pytestmark = [pytest.mark.browser, pytest.mark.triton]

# The WebSocket page's fixtures, as this module's own (module scope: one gateway and one browser for these tests).
gateway_url = test_web.gateway_url
portrait_files = test_web.portrait_files
fake_microphone_wav = test_web.fake_microphone_wav
browser = test_web.browser
web = test_web.web

CONNECT_TIMEOUT_MS = 60_000
# Frame freezes Chromium counted (a frame shown ≥ 150 ms longer than usual). The target is none; the shared 2-core
# machine (Triton, the gateway, Chromium's software H.264 decoder) may stall a frame now and then.
MAX_FREEZES = 2


def use_webrtc(page: Page) -> None:
    transport = page.get_by_role("combobox", name="Transport")
    assert transport.input_value() == "websocket"  # the default
    chunk = page.get_by_label("Frames per fragment (1–25)")
    assert chunk.input_value() == "8"
    transport.select_option("webrtc")
    assert chunk.input_value() == "4"  # WebRTC's own default: an interrupt cuts at the next chunk


def webrtc_stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] | None = hook(page)["stats"]["webrtc"]
    assert stats is not None, "no WebRTC figures in window.lipsync.stats.webrtc"
    return stats


def decoded_video_frames(page: Page) -> int:
    frames: int = page.evaluate("document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames")
    return frames


@pytest.mark.slow
def test_microphone_over_webrtc_plays_live(web: WebPage, portrait_files: dict[str, Path]) -> None:
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    use_webrtc(page)
    assert page.get_by_role("radio", name="Microphone (live)").is_checked()
    page.locator("details.more summary").click()
    page.get_by_label("Measure glass-to-glass latency").check()  # microphone → the frame on screen, over WebRTC

    page.get_by_role("button", name="Start").click()
    started = wait_for_state(page, "streaming", "error", timeout_ms=CONNECT_TIMEOUT_MS)
    assert started == "streaming", hook(page)["errors"]
    assert page.get_by_role("combobox", name="Transport").is_disabled()  # no change mid-session
    page.wait_for_function("window.lipsync.stats.audioSecondsSent >= 2", timeout=CONNECT_TIMEOUT_MS)
    # The browser decodes the server's video track: a second of frames at least before Stop.
    page.wait_for_function(
        "window.lipsync.stats.webrtc !== null && window.lipsync.stats.webrtc.framesDecoded >= 25",
        timeout=CONNECT_TIMEOUT_MS,
    )
    page.wait_for_function(
        "window.lipsync.stats.glassToGlass && window.lipsync.stats.glassToGlass.frames >= 25",
        timeout=CONNECT_TIMEOUT_MS,
    )
    assert page.evaluate("document.querySelector('video').srcObject.getTracks().length") == 2  # video and audio
    assert page.evaluate("document.querySelector('video').muted")  # your own voice: muted, as over the WebSocket
    screenshot(page, "webrtc-microphone-streaming")
    page.get_by_role("button", name="Stop").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]

    state = hook(page)
    assert state["errors"] == [], state["errors"]
    assert state["transport"] == "webrtc"
    assert state["ready"]["mime_type"] == "webrtc"
    stats = state["stats"]
    rtc = webrtc_stats(page)
    glass = stats["glassToGlass"]
    LOG.info(
        "microphone over WebRTC (wav2lip, demo models): %d frames, %.2f s of speech counted, first frame after "
        "%.0f ms; glass to glass %s; browser figures %s",
        state["end"]["frames"],
        stats["audioSecondsSent"],
        stats["timeToFirstFrameMs"],
        glass,
        rtc,
    )
    # The page's count of the track's samples starts as the data channel opens, the server's with the first
    # packets: to a few tens of ms. At least the model's look-ahead and a chunk; less than the whole stream.
    assert 100 < glass["medianMs"] <= glass["p95Ms"] < 1000 * stats["audioSecondsSent"] + 5000, glass
    assert state["end"]["frames"] >= 50  # 2 s of speech and more reached the server on the track
    assert stats["timeToFirstFrameMs"] is not None and stats["timeToFirstFrameMs"] < stats["streamEndMs"]
    assert rtc["framesDecoded"] >= 25 and decoded_video_frames(page) > 0
    assert rtc["totalSamplesReceived"] > 0  # the avatar's audio track played too
    assert rtc["codec"] == "video/H264"  # Debian's Chromium offers H.264; the server prefers it
    assert rtc["freezeCount"] is not None and rtc["freezeCount"] <= MAX_FREEZES, rtc
    # Nothing was recorded: no download; a new session can start.
    assert page.get_by_role("button", name="Download MP4").is_disabled()
    assert page.get_by_role("button", name="Start").is_enabled()
    assert page.locator("#stat-webrtc").inner_text().startswith("H264, ")
    # The microphone was released (the level meter is back at zero) and the connection closes after `end`.
    assert page.evaluate("document.getElementById('mic-level').value") == 0
    page.wait_for_function(
        "document.querySelector('video').srcObject.getTracks().every(t => t.readyState === 'ended')",
        timeout=30_000,
    )
    screenshot(page, "webrtc-microphone-done")
    assert web.unexpected_console_errors() == []


@pytest.mark.slow
def test_conversation_over_webrtc_speaks_a_file_and_takes_an_interrupt(
    web: WebPage,
    portrait_files: dict[str, Path],
    spoken_wav: Path,
) -> None:
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Session").select_option("conversation")
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    use_webrtc(page)
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    page.locator("details.more summary").click()
    page.get_by_label("Measure glass-to-glass latency").check()  # times the interrupt below
    page.get_by_role("button", name="Start").click()
    started = wait_for_state(page, "streaming", "error", timeout_ms=CONNECT_TIMEOUT_MS)
    assert started == "streaming", hook(page)["errors"]
    # The avatar appears and idles before anyone speaks.
    page.wait_for_function("window.lipsync.stats.timeToFirstFrameMs !== null", timeout=CONNECT_TIMEOUT_MS)
    ready = hook(page)["ready"]
    assert ready["mode"] == "conversation" and ready["mime_type"] == "webrtc"
    page.get_by_role("button", name="Speak file").click()  # the file's PCM goes up the data channel
    page.wait_for_function("window.lipsync.utterances.length > 0", timeout=STREAM_TIMEOUT_MS)
    utterance = hook(page)["utterances"][0]
    assert utterance["utterance_id"] == "file-1"
    # Over WebRTC an interrupt takes back the frames not yet played: interrupt once speech is on screen (the frame
    # numbers the page reads from each displayed frame's corner), so that some of it stays in the timeline.
    page.wait_for_function(
        "first => window.lipsync.stats.displayedFrame !== null && window.lipsync.stats.displayedFrame >= first",
        arg=utterance["first_frame"] + 12,
        timeout=STREAM_TIMEOUT_MS,
    )
    page.get_by_role("button", name="Interrupt").click()
    page.wait_for_function("window.lipsync.interrupted.length > 0", timeout=STREAM_TIMEOUT_MS)
    # The first idle frame the server named was displayed: the page timed it from the click.
    page.wait_for_function(
        "window.lipsync.stats.glassToGlass && window.lipsync.stats.glassToGlass.interruptsMs.length > 0",
        timeout=STREAM_TIMEOUT_MS,
    )
    state = hook(page)
    interrupt_ms = state["stats"]["glassToGlass"]["interruptsMs"][0]
    LOG.info(
        "interrupt → first idle frame displayed (wav2lip, demo models, WebRTC page): %.0f ms; interrupted %s",
        interrupt_ms,
        state["interrupted"][0],
    )
    assert 0 < interrupt_ms < 10_000  # the target (≤ 200 ms) is the benchmark's, not this loaded machine's
    interrupted = state["interrupted"][0]
    assert interrupted["frame"] <= interrupted["next_frame"]
    page.get_by_role("button", name="Stop").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    state = hook(page)
    kinds = [segment["kind"] for segment in state["end"]["timeline"]]
    assert kinds[0] == "silence" and "speech" in kinds  # idle first, then the burst
    speech = sum(s["end"] - s["start"] for s in state["end"]["timeline"] if s["kind"] == "speech")
    assert speech < decode_audio(spoken_wav.read_bytes()).size  # the interrupt cut it short
    rtc = webrtc_stats(page)
    LOG.info("conversation over WebRTC: %d frames; browser figures %s", state["end"]["frames"], rtc)
    assert rtc["framesDecoded"] > 0 and rtc["totalSamplesReceived"] > 0
    screenshot(page, "webrtc-conversation")
    assert state["errors"] == [] and web.unexpected_console_errors() == []


def test_a_refused_webrtc_offer_shows_the_server_message(
    web: WebPage,
    portrait_files: dict[str, Path],
) -> None:
    """The server refuses the offer itself (HTTP 400): a conversation keeps the head still, and SadTalker was asked
    to move it with the audio. The page shows the server's words, and a new try is possible."""
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Session").select_option("conversation")
    page.get_by_role("combobox", name="Head pose").select_option("audio")
    use_webrtc(page)
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "error", "streaming", timeout_ms=CONNECT_TIMEOUT_MS) == "error"
    errors = hook(page)["errors"]
    assert [(e["source"], e["code"]) for e in errors] == [("server", BadMessage.code)], errors
    message = errors[0]["message"]
    assert "conversation mode keeps the head still" in message, message
    assert page.get_by_role("alert").filter(has_text=message).is_visible()
    assert page.locator("#status").inner_text() == "The server refused the session (see Messages)."
    assert page.get_by_role("button", name="Start").is_enabled()  # a new try is possible
    assert page.get_by_role("combobox", name="Transport").is_enabled()
    screenshot(page, "webrtc-refused")
    # The browser itself logs the refused offer (HTTP 400); nothing else may be an error.
    assert web.unexpected_console_errors("status of 400") == []


@pytest.mark.slow
def test_cancel_over_webrtc_releases_everything_and_a_websocket_session_follows(
    web: WebPage,
    portrait_files: dict[str, Path],
) -> None:
    page = web.page
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    use_webrtc(page)
    page.get_by_role("button", name="Start").click()
    started = wait_for_state(page, "streaming", "error", timeout_ms=CONNECT_TIMEOUT_MS)
    assert started == "streaming", hook(page)["errors"]
    page.wait_for_function("document.querySelector('video').srcObject !== null", timeout=CONNECT_TIMEOUT_MS)
    page.get_by_role("button", name="Cancel").click()
    state = hook(page)
    assert state["state"] == "cancelled" and state["errors"] == []  # closing on purpose is not an error
    assert page.evaluate("document.querySelector('video').srcObject") is None  # the connection's tracks are gone
    assert page.evaluate("document.getElementById('mic-level').value") == 0  # the microphone was released
    assert page.get_by_role("button", name="Start").is_enabled()

    # The next session, over the WebSocket, plays through Media Source Extensions as before.
    page.get_by_role("combobox", name="Transport").select_option("websocket")
    assert page.get_by_label("Frames per fragment (1–25)").input_value() == "8"  # back to the WebSocket's
    page.get_by_role("button", name="Start").click()
    started = wait_for_state(page, "streaming", "error", timeout_ms=CONNECT_TIMEOUT_MS)
    assert started == "streaming", hook(page)["errors"]
    page.wait_for_function("window.lipsync.stats.timeToFirstFrameMs !== null", timeout=STREAM_TIMEOUT_MS)
    state = hook(page)
    assert state["transport"] == "websocket" and state["stats"]["webrtc"] is None
    assert state["ready"]["mime_type"].startswith("video/mp4")
    assert page.evaluate("document.querySelector('video').srcObject") is None
    assert page.evaluate("document.querySelector('video').src").startswith("blob:")
    assert page.locator("#stat-webrtc-row").is_hidden()
    page.get_by_role("button", name="Cancel").click()
    assert hook(page)["errors"] == [] and web.unexpected_console_errors() == []


@pytest.mark.slow
def test_webrtc_works_under_the_pages_content_security_policy(
    browser: Browser, gateway_url: str, portrait_files: dict[str, Path]
) -> None:
    """The other tests bypass the CSP (their string predicates need eval): here it is enforced, and the offer
    (fetch), the peer connection and the tracks as srcObject work without a single violation. Waits use locators
    (Playwright's own world, outside the page's CSP)."""
    with csp_enforced_page(browser) as (page, errors):
        page.goto(f"{gateway_url}/")
        expect(page.locator("#demo-banner")).to_be_visible()  # the page's module ran and asked /v1/info
        page.get_by_label("Choose a portrait or a clip…").set_input_files(str(portrait_files["face"]))
        page.get_by_role("combobox", name="Engine").select_option("wav2lip")
        page.get_by_role("combobox", name="Transport").select_option("webrtc")
        start = page.get_by_role("button", name="Start")
        expect(start).to_be_enabled(timeout=60_000)
        start.click()
        expect(page.locator("#stat-frames")).to_have_text(re.compile(r"^[1-9]\d*$"), timeout=CONNECT_TIMEOUT_MS)
        expect(page.locator("#stat-webrtc")).to_have_text(re.compile(r"^H264, [1-9]\d* frames decoded"))
        page.get_by_role("button", name="Stop").click()
        expect(start).to_be_enabled(timeout=STREAM_TIMEOUT_MS)
        assert page.locator("#status").inner_text().startswith("Done.")
        assert page.evaluate("document.querySelector('video').getVideoPlaybackQuality().totalVideoFrames") > 0
        assert page.evaluate("window.cspViolations") == []
        assert errors == []


@pytest.mark.slow
def test_an_audio_file_clip_over_webrtc_is_decoded_in_the_page_and_sent_as_pcm(
    web: WebPage, portrait_files: dict[str, Path], spoken_wav: Path
) -> None:
    page = web.page
    page.wait_for_function("window.lipsync.info !== null")
    assert choose_portrait(page, portrait_files["face"]) == "ready", hook(page)["errors"]
    page.get_by_role("combobox", name="Engine").select_option("wav2lip")
    use_webrtc(page)
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(spoken_wav))
    page.get_by_role("button", name="Start").click()
    assert wait_for_state(page, "done", "error") == "done", hook(page)["errors"]
    state = hook(page)
    assert state["errors"] == [], state["errors"]
    assert state["ready"]["mime_type"] == "webrtc"
    # The browser's decoding (16 kHz) and the server's agree on the length to a frame.
    expected = decode_audio(spoken_wav.read_bytes()).size // 640
    assert abs(state["end"]["frames"] - expected) <= 1, (state["end"]["frames"], expected)
    page.wait_for_function(
        "window.lipsync.stats.webrtc !== null && window.lipsync.stats.webrtc.framesDecoded >= 25", timeout=30_000
    )
    assert page.get_by_role("button", name="Download MP4").is_disabled()  # nothing recorded
    assert web.unexpected_console_errors() == []
