"""Both transports side by side in Chromium, on the page, against a running gateway: what a person sees.

    LIPSYNC_PORT=8765 python -m gateway up --demo &          # or any running system (the demo models here)
    python bench/browser_latency.py --url http://127.0.0.1:8765 [--engine wav2lip] [--interrupts 3]
                                    [--server-pid PID] [--transports websocket,webrtc] [--no-assert]

For each transport (WebSocket fMP4, WebRTC), Debian's Chromium opens the page with its fake microphone speaking
an espeak-ng sentence, with "Measure glass-to-glass latency" on (each frame carries its number, read back
from the displayed picture: web/latency.js):

- **microphone, clip mode**: Start → the first frame displayed, and glass to glass (a frame's audio captured →
  that frame displayed, on the page's clock) median and p95 over the frames of ≈ 6 s of speech;
- **conversation**: the sentence pushed as an utterance ("Speak file"), then **Interrupt** once the
  utterance's frames are on screen; click → the first idle frame displayed, ``--interrupts`` times, and the
  longest freeze in the two seconds of idle video that follow (40 ms: none);
- with ``--server-pid`` (the gateway's process), its CPU time per second of session (encoding included).

The issue's targets are checked at the end: the last speaking frame on screen ≤ 200 ms after the interrupt
over WebRTC, ≤ 300 ms over fMP4. What the page times is the *first idle frame* displayed, which replaces the
last speaking one a frame (40 ms) after it appeared, so the check is first idle ≤ target + 40 ms (the click
reaching the server is part of it: ≈ 1 ms on loopback); and the idle video after it plays on (no freeze over
500 ms, our own bound). The exit status is 1 when one is missed
(``--no-assert``: report only). Each figure names the CPU it was taken on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_class

CHROMIUM = "/usr/bin/chromium"
TARGET_INTERRUPT_MS = {"webrtc": 200.0, "websocket": 300.0}
# The idle video after an interrupt plays on: no wait for a new frame longer than this (ours, not the issue's).
TARGET_IDLE_FREEZE_MS = 500.0
TIMEOUT_MS = 240_000
FRAME_MS = 40.0


def speech_files(folder: Path) -> tuple[Path, Path]:
    """The espeak-ng sentence at 16 kHz (to speak as a file) and at 48 kHz (Chromium's fake microphone)."""
    sentence = folder / "sentence.wav"
    subprocess.run(
        ["espeak-ng", "-s", "160", "-w", str(sentence), "The quick brown fox jumps over the lazy dog."],
        check=True,
        capture_output=True,
    )
    with wave.open(str(sentence)) as wav:
        rate, pcm = wav.getframerate(), np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    for name, target in (("speech_16k.wav", 16_000), ("microphone_48k.wav", 48_000)):
        ratio = Fraction(target, rate)
        out = np.clip(np.rint(resample_poly(pcm, ratio.numerator, ratio.denominator)), -32768, 32767)
        with wave.open(str(folder / name), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(target)
            wav.writeframes(out.astype("<i2").tobytes())
    return folder / "speech_16k.wav", folder / "microphone_48k.wav"


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 10 ms


def hook(page: Any) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate("JSON.parse(JSON.stringify(window.lipsync))")
    return value


def prepare(page: Any, url: str, portrait: Path, transport: str, engine: str, mode: str, chunk: int) -> None:
    page.goto(f"{url}/")
    page.wait_for_function("window.lipsync && window.lipsync.info !== null", timeout=60_000)
    page.get_by_label("Choose a portrait or a clip…").set_input_files(str(portrait))
    page.wait_for_function("window.lipsync.state === 'ready'", timeout=60_000)
    page.get_by_role("combobox", name="Transport").select_option(transport)
    page.get_by_role("combobox", name="Engine").select_option(engine)
    page.get_by_role("combobox", name="Session").select_option(mode)
    page.locator("details.more summary").click()
    page.get_by_label("Frames per fragment (1–25)").fill(str(chunk))
    page.get_by_label("Measure glass-to-glass latency").check()


def microphone_session(page: Any, url: str, portrait: Path, transport: str, engine: str, chunk: int) -> dict[str, Any]:
    prepare(page, url, portrait, transport, engine, "clip", chunk)
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("window.lipsync.state === 'streaming'", timeout=TIMEOUT_MS)
    page.wait_for_function(
        "window.lipsync.stats.glassToGlass && window.lipsync.stats.glassToGlass.frames >= 150", timeout=TIMEOUT_MS
    )
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("['done', 'error'].includes(window.lipsync.state)", timeout=TIMEOUT_MS)
    state = hook(page)
    glass = state["stats"]["glassToGlass"]
    return {
        "first_frame_ms": round(state["stats"]["timeToFirstFrameMs"]),
        "glass_median_ms": round(glass["medianMs"]),
        "glass_p95_ms": round(glass["p95Ms"]),
        "frames_measured": glass["frames"],
        "errors": state["errors"],
        "webrtc": state["stats"].get("webrtc"),
    }


def interrupt_session(
    page: Any, url: str, portrait: Path, speech: Path, transport: str, engine: str, count: int, chunk: int
) -> dict[str, Any]:
    prepare(page, url, portrait, transport, engine, "conversation", chunk)
    page.get_by_role("radio", name="Audio file").check()
    page.get_by_label("Choose an audio file…").set_input_files(str(speech))
    page.get_by_role("button", name="Start").click()
    page.wait_for_function("window.lipsync.stats.timeToFirstFrameMs !== null", timeout=TIMEOUT_MS)
    for index in range(count):
        page.get_by_role("button", name="Speak file").click()
        page.wait_for_function("n => window.lipsync.utterances.length > n", arg=index, timeout=TIMEOUT_MS)
        first = hook(page)["utterances"][index]["first_frame"]
        # Interrupt once half a second of the utterance is on screen (its frame numbers are read back).
        page.wait_for_function(
            "f => (window.lipsync.stats.displayedFrame ?? -1) >= f", arg=first + 12, timeout=TIMEOUT_MS
        )
        page.get_by_role("button", name="Interrupt").click()
        # ...and watch the idle video that follows for freezes (latency.js: two seconds of it).
        page.wait_for_function(
            "n => (window.lipsync.stats.glassToGlass?.interruptFreezesMs ?? []).length > n",
            arg=index,
            timeout=TIMEOUT_MS,
        )
    page.get_by_role("button", name="Stop").click()
    page.wait_for_function("['done', 'error'].includes(window.lipsync.state)", timeout=TIMEOUT_MS)
    state = hook(page)
    return {
        "interrupts_ms": [round(ms) for ms in state["stats"]["glassToGlass"]["interruptsMs"]],
        # The longest wait for a new frame in the 2 s of idle video after each interrupt (40 ms: none).
        "idle_freeze_ms": [round(ms) for ms in state["stats"]["glassToGlass"]["interruptFreezesMs"]],
        "errors": state["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765")
    parser.add_argument("--engine", default="wav2lip")
    parser.add_argument("--interrupts", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=8, help="frames per fragment (the page's option)")
    parser.add_argument("--portrait", type=Path, default=None, help="default: the astronaut photo")
    parser.add_argument("--server-pid", type=int, default=None, help="the gateway's pid: its CPU per session")
    parser.add_argument("--no-assert", action="store_true", help="report without checking the targets")
    parser.add_argument(
        "--transports", default="websocket,webrtc", help="comma-separated: websocket (fMP4 over MSE), webrtc"
    )
    args = parser.parse_args()
    transports = [name for name in args.transports.split(",") if name]
    if unknown := set(transports) - set(TARGET_INTERRUPT_MS):
        parser.error(f"unknown transport(s) {', '.join(sorted(unknown))}: websocket, webrtc")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        speech, microphone = speech_files(Path(folder))
        portrait = args.portrait
        if portrait is None:
            from PIL import Image
            from skimage import data

            portrait = Path(folder) / "astronaut.jpg"
            Image.fromarray(data.astronaut()).save(portrait, quality=92)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}",
        ]
        results: dict[str, Any] = {"cpu": cpu_class(), "engine": args.engine, "chunk": args.chunk, "url": args.url}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
            for transport in transports:
                context = browser.new_context(bypass_csp=True)
                page = context.new_page()
                cpu_before, started = cpu_seconds(args.server_pid), time.perf_counter()
                mic = microphone_session(page, args.url, portrait, transport, args.engine, args.chunk)
                cpu_after, elapsed = cpu_seconds(args.server_pid), time.perf_counter() - started
                if cpu_before is not None and cpu_after is not None:
                    mic["gateway_cpu_share"] = round((cpu_after - cpu_before) / elapsed, 3)
                talk = interrupt_session(
                    page, args.url, portrait, speech, transport, args.engine, args.interrupts, args.chunk
                )
                results[transport] = {"microphone": mic, "conversation": talk}
                context.close()
            browser.close()
    print(json.dumps(results, indent=2))
    missed = []
    for transport in transports:
        target = TARGET_INTERRUPT_MS[transport]
        times = results[transport]["conversation"]["interrupts_ms"]
        median = statistics.median(times) if times else float("inf")
        last_speaking = median - FRAME_MS  # the frame the first idle one replaced appeared a frame earlier
        verdict = "met" if last_speaking <= target else "NOT met"
        print(
            f"{transport}: interrupt → first idle frame displayed, median {median:.0f} ms: the last speaking "
            f"frame appeared ≈ {last_speaking:.0f} ms after it (target ≤ {target:.0f}): {verdict}"
        )
        if last_speaking > target:
            missed.append(transport)
        freezes = results[transport]["conversation"]["idle_freeze_ms"]
        freeze = statistics.median(freezes) if freezes else float("inf")
        verdict = "met" if freeze <= TARGET_IDLE_FREEZE_MS else "NOT met"
        print(f"{transport}: then the longest freeze of the idle video, median {freeze:.0f} ms (≤ 500): {verdict}")
        if freeze > TARGET_IDLE_FREEZE_MS:
            missed.append(transport)
    return 1 if missed and not args.no_assert else 0


if __name__ == "__main__":
    sys.exit(main())
