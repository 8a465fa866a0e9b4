// The WebRTC transport, client side (docs/protocol.md §5): one RTCPeerConnection per session. The page posts its
// SDP offer with the `start` fields to POST /v1/webrtc/offer and applies the answer; the server sends the video
// (25 fps, H.264 or VP8) and its audio (Opus) on tracks, which the browser plays in real time — no fragments, no
// buffer ahead — and the control messages travel on the page's data channel as the same JSON as on /ws/stream.
// Audio goes up as the microphone's track (the browser encodes it) or as int16 PCM in binary data-channel
// messages (a file, a conversation's utterance).

import { fileToPcm16k } from "./pcm.js";
import { LipsyncError, SessionBase, answerOrRefusal, authHeaders } from "./stream.js";

// The server does not trickle ICE: the offer goes once the browser has gathered its candidates. Host candidates
// take milliseconds; a machine with an unreachable interface may keep gathering, so the offer leaves with what
// is there after this long.
const ICE_GATHERING_TIMEOUT_MS = 3000;
// The answer applied → the data channel open: connectivity checks, DTLS and SCTP. Seconds on a loaded machine;
// the server's own start deadline is of the same order.
const CONNECT_TIMEOUT_MS = 20000;
// After the server's `end`, the last frames and audio are still in the browser's jitter buffers (tens of ms):
// the connection closes a little later, so that they play out.
const END_LINGER_MS = 1000;
// A long file goes up in 32 KB messages; above this many bytes queued in the data channel, the page waits for
// it to drain instead of piling the whole file into the browser's send buffer.
const MAX_BUFFERED_BYTES = 1 << 20;

// GET /v1/webrtc/ice-servers: [{urls, username?, credential?}] — TURN credentials are this page's and expire.
async function iceServers(url) {
  let response;
  try {
    response = await fetch(url, { headers: authHeaders() });
  } catch (err) {
    throw new LipsyncError("network", `The WebRTC settings could not be read: ${err.message}`, "network");
  }
  const body = await answerOrRefusal(response, "the WebRTC settings");
  return Array.isArray(body?.ice_servers) ? body.ice_servers : [];
}

// One session over WebRTC. Callbacks besides SessionBase's:
//   onTrack(MediaStream) — the server's video and audio tracks in one stream, for a <video>'s srcObject.
export class RtcSession extends SessionBase {
  constructor({
    offerUrl = "/v1/webrtc/offer",
    iceServersUrl = "/v1/webrtc/ice-servers",
    avatarId,
    audio,
    options,
    mode = "clip",
    handlers,
  }) {
    super({ avatarId, audio, options, mode, handlers });
    this.transport = "webrtc";
    this.offerUrl = offerUrl;
    this.iceServersUrl = iceServersUrl;
    this.pc = null;
    this.channel = null;
    this.microphone = null; // the MediaStream whose audio track is sent, when the microphone speaks
    this.remote = null; // the server's tracks, as one MediaStream
    this.sessionId = null;
    this.isClosed = false;
    this.lingerTimer = null;
    this.lastStats = null;
    this.abortOpen = null;
  }

  // Offers, applies the answer and resolves once the data channel is open (the server then sends `ready`).
  // Rejects with a LipsyncError: the server's own words when it refused the offer (HTTP 4xx/5xx), else what
  // went wrong with the connection. `microphone`: a MediaStream whose audio track is sent (sendrecv: the
  // avatar's audio comes back on the same m-line); without it audio is only received and PCM goes on the channel.
  async open({ microphone = null } = {}) {
    this.microphone = microphone;
    try {
      if (typeof RTCPeerConnection === "undefined") {
        throw new LipsyncError(
          "webrtc_unsupported",
          "This browser has no WebRTC: choose the WebSocket transport in the options.",
          "client",
        );
      }
      // The server's STUN/TURN servers, if it has any (none: one host or one LAN, where host candidates meet).
      const pc = new RTCPeerConnection({ iceServers: await iceServers(this.iceServersUrl) });
      this.pc = pc;
      // The data channel and the transceivers must be in the offer: the server answers what was offered.
      const channel = pc.createDataChannel("control");
      channel.binaryType = "arraybuffer";
      this.channel = channel;
      channel.onmessage = (event) => {
        if (typeof event.data === "string") this.receiveText(event.data); // the server sends no binary
      };
      const track = microphone ? microphone.getAudioTracks()[0] : null;
      if (track) pc.addTrack(track, microphone);
      else pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
      // The server's two tracks share one stream id (the browser synchronises them by it); the page gathers
      // them in a MediaStream of its own, so that one <video> plays both whatever ids the answer gave.
      this.remote = new MediaStream();
      let announced = false;
      pc.ontrack = (event) => {
        this.remote.addTrack(event.track);
        if (announced) this.handlers.onTrack?.(this.remote); // a track after the answer (not expected)
      };

      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, ICE_GATHERING_TIMEOUT_MS);
      this.checkCancelled();
      const { type: _type, ...start } = this.start; // the offer carries the `start` fields without `type`
      let response;
      try {
        response = await fetch(this.offerUrl, {
          method: "POST",
          headers: { "Content-Type": "application/json", ...authHeaders() },
          body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", start }),
        });
      } catch (err) {
        throw new LipsyncError("network", `The WebRTC offer could not be sent: ${err.message}`, "network");
      }
      const answer = await answerOrRefusal(response, "the WebRTC session");
      if (!answer || typeof answer.sdp !== "string" || answer.type !== "answer") {
        throw new LipsyncError("bad_answer", "The server's answer to the WebRTC offer was not understood.");
      }
      this.checkCancelled();
      this.sessionId = answer.session_id || null;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp }); // fires ontrack for each track
      announced = true;
      if (this.remote.getTracks().length > 0) this.handlers.onTrack?.(this.remote);
      await channelOpened(pc, channel, CONNECT_TIMEOUT_MS, (abort) => {
        this.abortOpen = abort; // close() while waiting: the wait ends at once
      });
      this.abortOpen = null;
    } catch (err) {
      this.failed = true; // reported through the rejection, not onError
      this.close();
      if (err instanceof LipsyncError) throw err;
      throw new LipsyncError("webrtc", `Could not start the WebRTC session: ${err.message}`, "connection");
    }
    // From here on, a lost connection is an error in words (unless the session ended or was cancelled).
    this.channel.onclose = () => {
      if (!(this.ended || this.cancelled || this.failed)) {
        this.fail(new LipsyncError("connection_closed", "The server closed the WebRTC connection.", "connection"));
      }
      this.close();
    };
    this.pc.onconnectionstatechange = () => {
      // "disconnected" may recover by itself; "failed" is final (consent checks went unanswered for seconds).
      if (this.pc.connectionState === "failed") {
        this.fail(
          new LipsyncError(
            "connection_failed",
            "The WebRTC connection to the server was lost (no packets came back for several seconds).",
            "connection",
          ),
        );
      }
    };
  }

  checkCancelled() {
    if (this.cancelled) throw new LipsyncError("cancelled", "The session was cancelled.", "client");
  }

  get isOpen() {
    return this.channel !== null && this.channel.readyState === "open";
  }

  sendText(text) {
    this.channel.send(text);
  }

  sendBinary(buffer) {
    this.channel.send(buffer);
  }

  // Clip mode from a file: the browser decodes it to 16 kHz PCM (the server takes PCM over WebRTC), which goes
  // up in binary messages, then `end`.
  async sendFile(file) {
    let pcm;
    try {
      pcm = await fileToPcm16k(file);
    } catch (err) {
      throw new Error(`this browser could not decode it (${err.message})`);
    }
    for (let offset = 0; offset < pcm.length; offset += 16000) {
      await this.drained();
      if (!this.sendPcm(pcm.subarray(offset, offset + 16000))) return;
    }
    this.end();
  }

  // Resolves once the data channel has room (or has closed: the next send then reports it).
  drained() {
    const channel = this.channel;
    if (!this.isOpen || channel.bufferedAmount <= MAX_BUFFERED_BYTES) return Promise.resolve();
    channel.bufferedAmountLowThreshold = MAX_BUFFERED_BYTES / 2;
    return new Promise((resolve) => {
      const done = () => {
        channel.removeEventListener("bufferedamountlow", done);
        channel.removeEventListener("close", done);
        resolve();
      };
      channel.addEventListener("bufferedamountlow", done);
      channel.addEventListener("close", done);
    });
  }

  // `end`, then the microphone's track stops: the server ignores the packets that trail `end`.
  end() {
    const wasSent = this.endSent;
    super.end();
    if (this.endSent && !wasSent) this.releaseMicrophone();
  }

  // Abandons the session: closing the connection without `end` (the server drops the session).
  cancel() {
    this.cancelled = true;
    this.close();
  }

  receiveText(data) {
    super.receiveText(data);
    if (this.ended && this.lingerTimer === null && !this.isClosed) {
      this.lingerTimer = setTimeout(() => this.closeAfterEnd(), END_LINGER_MS);
    }
  }

  async closeAfterEnd() {
    try {
      await this.webrtcStats(); // the last figures, while the connection still answers
    } catch {
      // the figures of the last refresh stay
    }
    this.close();
  }

  fail(error) {
    super.fail(error);
    this.close(); // after the server's `error` it closes too; whatever went wrong, this session is over
  }

  releaseMicrophone() {
    if (!this.microphone) return;
    for (const track of this.microphone.getTracks()) track.stop();
    this.microphone = null;
  }

  // Closes the connection (once) and says so through onClose, last.
  close() {
    if (this.isClosed) return;
    this.isClosed = true;
    clearTimeout(this.lingerTimer);
    this.releaseMicrophone();
    this.abortOpen?.();
    if (this.channel) {
      this.channel.onmessage = null;
      this.channel.onclose = null;
    }
    if (this.pc) {
      this.pc.ontrack = null;
      this.pc.onconnectionstatechange = null;
      this.pc.close(); // ends the remote tracks too
    }
    this.handlers.onClose?.({ code: 0, reason: this.cancelled ? "cancelled" : "" });
  }

  // What the browser's WebRTC stack says about the received media (RTCPeerConnection.getStats), or the last
  // figures once the connection is closed; null before there are any.
  //   video: codec (mimeType), framesReceived, framesDecoded, framesDropped, freezeCount, totalFreezesDuration (s),
  //   jitterBufferMs (per frame emitted), decodeMs (per frame decoded), packetsLost, width, height;
  //   audio: totalSamplesReceived, concealedSamples, audioJitterBufferMs; roundTripMs (the ICE pair's).
  async webrtcStats() {
    const pc = this.pc;
    if (!pc || this.isClosed || pc.connectionState === "closed") return this.lastStats;
    const report = await pc.getStats();
    let video = null;
    let audio = null;
    let pair = null;
    const codecs = new Map();
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") video = entry;
      else if (entry.type === "inbound-rtp" && entry.kind === "audio") audio = entry;
      else if (entry.type === "codec") codecs.set(entry.id, entry);
      else if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") pair = entry;
    });
    const perEvent = (total, count) => (total !== undefined && count > 0 ? (1000 * total) / count : null);
    const stats = {
      codec: video && codecs.has(video.codecId) ? codecs.get(video.codecId).mimeType : null,
      framesReceived: video?.framesReceived ?? 0,
      framesDecoded: video?.framesDecoded ?? 0,
      framesDropped: video?.framesDropped ?? 0,
      freezeCount: video?.freezeCount ?? null,
      totalFreezesDuration: video?.totalFreezesDuration ?? null,
      jitterBufferMs: perEvent(video?.jitterBufferDelay, video?.jitterBufferEmittedCount),
      decodeMs: perEvent(video?.totalDecodeTime, video?.framesDecoded),
      packetsLost: (video?.packetsLost ?? 0) + (audio?.packetsLost ?? 0),
      width: video?.frameWidth ?? null,
      height: video?.frameHeight ?? null,
      totalSamplesReceived: audio?.totalSamplesReceived ?? 0,
      concealedSamples: audio?.concealedSamples ?? 0,
      audioJitterBufferMs: perEvent(audio?.jitterBufferDelay, audio?.jitterBufferEmittedCount),
      roundTripMs: pair && typeof pair.currentRoundTripTime === "number" ? 1000 * pair.currentRoundTripTime : null,
    };
    this.lastStats = stats;
    return stats;
  }
}

// Resolves once ICE gathering is complete, or after `timeoutMs` (the offer then carries what was gathered).
function iceGathered(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Resolves once the data channel is open; rejects in words when the connection fails, closes or takes too long.
// `onAbort` receives a function that ends the wait (the session was closed: a closed connection fires no events).
function channelOpened(pc, channel, timeoutMs, onAbort) {
  if (channel.readyState === "open") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const finish = (error) => {
      clearTimeout(timer);
      channel.removeEventListener("open", onOpen);
      channel.removeEventListener("close", onClose);
      pc.removeEventListener("connectionstatechange", onState);
      if (error) reject(error);
      else resolve();
    };
    const noPath = (what) =>
      new LipsyncError(
        "connection_failed",
        `Could not connect to the server over WebRTC: ${what}. A firewall may block UDP between this browser ` +
          "and the server; the WebSocket transport works without it.",
        "connection",
      );
    const onOpen = () => finish(null);
    const onClose = () => finish(noPath("the connection closed before the session could start"));
    const onState = () => {
      if (pc.connectionState === "failed") finish(noPath("no network path was found between the two"));
    };
    onAbort(() => finish(new LipsyncError("cancelled", "The session was closed before it started.", "client")));
    const timer = setTimeout(
      () => finish(noPath(`the connection did not open within ${Math.round(timeoutMs / 1000)} s`)),
      timeoutMs,
    );
    channel.addEventListener("open", onOpen);
    channel.addEventListener("close", onClose);
    pc.addEventListener("connectionstatechange", onState);
  });
}
