// Media Source Extensions playback of the live fMP4 stream (docs/fmp4.md, "What the browser side needs").
//
// The first buffer is the init segment, every later one a media segment (moof + mdat) with absolute times;
// they are appended in order, one at a time (a SourceBuffer takes one append while not `updating`), in
// "segments" mode. Every byte is also kept, so the finished stream can be saved as one MP4 file.

const LIVE_MAX_LAG_S = 1.0; // live: jump forward when playback falls this far (+ the stream's swing) behind...
const LIVE_TARGET_LAG_S = 0.3; // ...to this far behind it
const KEEP_BEHIND_S = 20; // buffered media kept behind the playhead; older media is removed from the buffer
const TRIM_SLACK_S = 10; // trim only once this much more has piled up (fewer remove() calls)

export class MsePlayer {
  // onError(message), onFirstFrame(), onNotice(message): for the page's log.
  constructor(video, { onError = () => {}, onFirstFrame = () => {}, onNotice = () => {} } = {}) {
    this.video = video;
    this.onError = onError;
    this.onFirstFrame = onFirstFrame;
    this.onNotice = onNotice;
    this.reset();
    video.addEventListener("error", () => {
      if (!this.mediaSource) return; // a leftover of a previous session
      const err = video.error;
      this.fail(`The video could not be played: ${err ? describeMediaError(err) : "unknown media error"}.`);
    });
    video.addEventListener("timeupdate", () => this.keepNearLiveEdge());
  }

  // Drops everything from a previous session and detaches the video.
  reset() {
    this.mediaSource = null;
    this.sourceBuffer = null;
    this.queue = [];
    this.parts = [];
    this.bytes = 0;
    this.segments = 0;
    this.live = false;
    this.maxLagS = LIVE_MAX_LAG_S;
    this.liveJumps = 0;
    this.finishing = false;
    this.finished = false;
    this.failed = false;
    this.firstFrameSeen = false;
    this.playRequested = false;
    this.seekTo = null; // where to jump once it is buffered (an interrupt's next fragment)
    if (this.video.getAttribute("src")) {
      URL.revokeObjectURL(this.video.src);
      this.video.removeAttribute("src");
      this.video.load();
    }
  }

  // Attaches a new MediaSource with one SourceBuffer of `mimeType`; `live` keeps playback near the live edge.
  // `swingS`: how far ahead of the playhead the server may send by design (a conversation's speech), never
  // skipped as lag.
  async open(mimeType, { live, swingS = 0 }) {
    this.reset();
    if (!("MediaSource" in window)) throw new Error("This browser has no Media Source Extensions: it cannot play the stream.");
    if (!MediaSource.isTypeSupported(mimeType)) {
      throw new Error(`This browser cannot play the stream's format (${mimeType}).`);
    }
    this.live = live;
    this.maxLagS = LIVE_MAX_LAG_S + swingS;
    const mediaSource = new MediaSource();
    this.mediaSource = mediaSource;
    const url = URL.createObjectURL(mediaSource);
    this.video.src = url;
    await new Promise((resolve) => mediaSource.addEventListener("sourceopen", resolve, { once: true }));
    URL.revokeObjectURL(url);
    if (this.mediaSource !== mediaSource) return; // reset while waiting
    const sb = mediaSource.addSourceBuffer(mimeType);
    sb.mode = "segments"; // times come from the fragments (tfdt); "sequence" would re-time them
    sb.addEventListener("updateend", () => this.pump());
    sb.addEventListener("error", () => this.fail("The browser could not decode a piece of the stream."));
    this.sourceBuffer = sb;
    this.watchFirstFrame();
    this.pump();
  }

  // Queues one buffer from the server (init segment first).
  push(buffer) {
    if (this.failed || this.finishing) return;
    const bytes = new Uint8Array(buffer);
    this.parts.push(bytes);
    this.bytes += bytes.length;
    if (this.parts.length > 1) this.segments += 1;
    this.queue.push(bytes);
    this.pump();
  }

  // An interrupt: once what came before is appended, drop the video buffered after the playhead, and jump to
  // the next fragment (the one starting at `nextStartS`, stream time) as soon as it is appended. A seek to a
  // buffered key frame shows it at once, and keeps the playhead on the server's clock: re-timing the fragment
  // to the playhead instead left Chromium waiting ≈ 2 s before it played it, and then starved until the
  // server's clock caught up with the frames skipped.
  cutAhead(nextStartS) {
    if (this.failed || this.finishing) return;
    this.queue.push({ cut: nextStartS, removed: false });
    this.pump();
  }

  // The server sent `end`: close the stream once everything queued is appended.
  finish() {
    this.finishing = true;
    this.pump();
  }

  pump() {
    const sb = this.sourceBuffer;
    if (!sb || sb.updating || this.failed || this.mediaSource.readyState !== "open") return;
    this.seekIfDue();
    if (this.trimOld()) return; // remove() runs; updateend calls pump again
    if (this.queue.length === 0) {
      if (this.finishing && !this.finished) {
        this.finished = true;
        this.mediaSource.endOfStream();
      }
      this.startPlaying();
      return;
    }
    const next = this.queue[0];
    if (!(next instanceof Uint8Array)) {
      this.applyCut(next);
      return;
    }
    try {
      sb.appendBuffer(next);
      this.queue.shift();
    } catch (err) {
      if (err.name === "QuotaExceededError" && this.trimOld(true)) {
        this.onNotice("The video buffer was full: older video was removed from it.");
        return;
      }
      this.fail(`The video could not take more data: ${err.message}`);
    }
  }

  applyCut(cut) {
    const sb = this.sourceBuffer;
    const now = this.video.currentTime;
    if (!cut.removed) {
      cut.removed = true;
      if (this.bufferedEnd > now + 0.01) {
        sb.remove(now, Infinity); // updateend calls pump again, which finishes the cut
        return;
      }
    }
    this.seekTo = Math.max(now, cut.cut); // timestampOffset stays 0: fragments keep the server's times
    this.queue.shift();
    this.pump();
  }

  // After an interrupt: the jump to the next fragment, once it is buffered.
  seekIfDue() {
    if (this.seekTo === null) return;
    const b = this.video.buffered;
    for (let i = 0; i < b.length; i += 1) {
      if (b.start(i) <= this.seekTo + 0.001 && this.seekTo < b.end(i)) {
        this.video.currentTime = Math.max(this.seekTo, b.start(i));
        this.seekTo = null;
        return;
      }
    }
  }

  // Removes media well behind the playhead; true when a remove() was started.
  trimOld(force = false) {
    const sb = this.sourceBuffer;
    if (sb.buffered.length === 0) return false;
    const start = sb.buffered.start(0);
    const keepFrom = this.video.currentTime - (force ? 2 : KEEP_BEHIND_S);
    if (keepFrom - start < (force ? 0.5 : TRIM_SLACK_S)) return false;
    sb.remove(start, keepFrom);
    return true;
  }

  startPlaying() {
    const video = this.video;
    if (video.buffered.length === 0) return;
    // A stream whose first fragment is not at 0 (or a trimmed buffer) starts where the media starts.
    if (video.currentTime < video.buffered.start(0)) video.currentTime = video.buffered.start(0);
    this.keepNearLiveEdge();
    if (this.playRequested) return;
    this.playRequested = true;
    video.play().catch((err) => {
      if (err.name === "NotAllowedError" && !video.muted) {
        // Autoplay with sound refused: play muted; the viewer can unmute with the video's controls.
        video.muted = true;
        this.onNotice("The browser blocked playback with sound: the video plays muted (unmute it in the player).");
        video.play().catch((again) => this.onNotice(`Playback did not start: ${again.message}`));
      } else if (err.name !== "AbortError") {
        this.onNotice(`Playback did not start: ${err.message}`);
      }
    });
  }

  keepNearLiveEdge() {
    if (!this.live || this.finished || !this.sourceBuffer) return;
    const end = this.bufferedEnd;
    if (end - this.video.currentTime > this.maxLagS) {
      this.video.currentTime = end - LIVE_TARGET_LAG_S;
      this.liveJumps += 1;
    }
  }

  watchFirstFrame() {
    const video = this.video;
    const seen = () => {
      if (this.firstFrameSeen) return;
      this.firstFrameSeen = true;
      this.onFirstFrame();
    };
    if ("requestVideoFrameCallback" in video) {
      video.requestVideoFrameCallback(seen); // called when the first frame is presented
    } else {
      const onTime = () => {
        if (video.currentTime > 0) {
          video.removeEventListener("timeupdate", onTime);
          seen();
        }
      };
      video.addEventListener("timeupdate", onTime);
    }
  }

  fail(message) {
    if (this.failed) return;
    this.failed = true;
    this.queue = [];
    this.onError(message);
  }

  get bufferedEnd() {
    const b = this.video.buffered;
    return b.length ? b.end(b.length - 1) : 0;
  }

  get bufferedAhead() {
    return Math.max(0, this.bufferedEnd - this.video.currentTime);
  }

  playbackQuality() {
    if (typeof this.video.getVideoPlaybackQuality !== "function") return null;
    const q = this.video.getVideoPlaybackQuality();
    return { dropped: q.droppedVideoFrames, total: q.totalVideoFrames };
  }

  // The whole stream received so far as one MP4 file (init segment + every media segment).
  toBlob() {
    return new Blob(this.parts, { type: "video/mp4" });
  }
}

function describeMediaError(err) {
  const kinds = {
    1: "playback was aborted",
    2: "a network error",
    3: "the stream could not be decoded",
    4: "the stream's format is not supported",
  };
  const kind = kinds[err.code] || `media error ${err.code}`;
  return err.message ? `${kind} (${err.message})` : kind;
}
