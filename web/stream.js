// The streaming protocol, client side (docs/protocol.md, version 1): avatar upload, what every session shares
// (SessionBase), and the WS /ws/stream session (StreamSession). The WebRTC session is in webrtc.js.

export const PROTOCOL_VERSION = 1;
const FILE_CHUNK_BYTES = 64 * 1024; // audio file bytes per binary message (well under any message limit)
const PCM_PIECE_SAMPLES = 16000; // int16 samples per binary message of PCM: 1 s at 16 kHz, 32,000 bytes

// What each close code means when the server closed without an `error` message first (protocol §3.4).
const CLOSE_MEANINGS = {
  1000: "The server closed the session.",
  1001: "The server is going away (restarting or shutting down).",
  1006: "The connection to the server was lost.",
  1009: "A message or the session was over the server's size limit.",
  1011: "The server could not render (inference unavailable). Try again in a moment.",
  4400: "The server did not accept a message from this page.",
  4401: "The server needs an access token this page does not have (open the page as /#token=…).",
  4403: "The server does not accept streams from this page's address (its allowed origins).",
  4404: "The server does not know this portrait any more. Choose it again.",
  4415: "The server could not decode the audio.",
  4503: "The server is busy (at its session limit). Try again later.",
};

// The gateway's bearer token when it has one (settings.auth_token): given to the page as `?token=…` or
// `#token=…` (the fragment never reaches server logs). Browsers cannot set headers on a WebSocket, so the
// socket carries it as the `token` query parameter, which the gateway accepts.
export function accessToken(loc = window.location) {
  const fromHash = new URLSearchParams(loc.hash.replace(/^#/, "")).get("token");
  return fromHash || new URLSearchParams(loc.search).get("token") || null;
}

// The HTTP routes' headers: the bearer token, when the page has one.
export function authHeaders() {
  const token = accessToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The JSON body of an HTTP answer (null when it has none); throws a LipsyncError with the server's own message
// (`{"error": {"code", "message"}}`) when the server refused `what`.
export async function answerOrRefusal(response, what) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body && body.error;
    if (error && error.message) throw new LipsyncError(error.code || `http_${response.status}`, error.message);
    throw new LipsyncError(
      `http_${response.status}`,
      `The server refused ${what} (HTTP ${response.status} ${response.statusText}).`,
    );
  }
  return body;
}

// An error a person can act on: `code` for machines, `message` in words.
export class LipsyncError extends Error {
  constructor(code, message, source = "server") {
    super(message);
    this.code = code;
    this.source = source;
  }
}

// A video file (a clip of the person) rather than a photo.
export function isVideo(file) {
  return Boolean(file.type) && file.type.startsWith("video/");
}

// POST /v1/avatars with a photo (field `image`) or a clip (field `video`). Resolves to {avatar_id, width, height,
// box, faces_seen, detector, kind, frames, duration, demo}; rejects with LipsyncError carrying the server's words.
export async function uploadAvatar(file, baseUrl = "") {
  const form = new FormData();
  form.append(isVideo(file) ? "video" : "image", file, file.name || "portrait");
  let response;
  try {
    response = await fetch(`${baseUrl}/v1/avatars`, { method: "POST", body: form, headers: authHeaders() });
  } catch (err) {
    throw new LipsyncError("network", `The portrait could not be sent: ${err.message}`, "network");
  }
  const body = await answerOrRefusal(response, "the portrait");
  if (!body || typeof body.avatar_id !== "string" || !Array.isArray(body.box)) {
    throw new LipsyncError("bad_answer", "The server's answer to the portrait upload was not understood.");
  }
  return body;
}

export function streamUrl(loc = window.location) {
  const token = accessToken(loc);
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws/stream${query}`;
}

// What both transports share (WebSocket: StreamSession below; WebRTC: RtcSession in webrtc.js): the `start`
// fields, the control messages the page sends, and the server's JSON messages, which are the same on both.
// Callbacks (all optional):
//   onReady(msg), onStats(msg), onInterrupted(msg), onEnd(msg),
//   onError(LipsyncError) — once at most, for an `error` message or an unexpected close,
//   onClose({code, reason}) — always, last.
// A transport implements `isOpen`, `sendText(string)`, `sendBinary(ArrayBuffer)`, `open()` and `cancel()`.
export class SessionBase {
  constructor({ avatarId, audio, options, mode = "clip", handlers }) {
    this.start = { type: "start", version: PROTOCOL_VERSION, avatar_id: avatarId, mode, audio, options };
    this.handlers = handlers;
    this.ready = null;
    this.ended = false; // the server's `end` arrived
    this.failed = false; // an error was reported
    this.endSent = false;
    this.cancelled = false;
    this.bytesSent = 0;
  }

  get isOpen() {
    return false;
  }

  sendAudio(buffer) {
    if (!this.isOpen || this.endSent) return false;
    this.sendBinary(buffer);
    this.bytesSent += buffer.byteLength;
    return true;
  }

  // Conversation mode: one utterance (int16 PCM at the session's rate) as a burst, after its `utterance` message.
  sendUtterance(id, pcm) {
    if (!this.isOpen || this.endSent) return false;
    this.sendText(JSON.stringify({ type: "utterance", id }));
    return this.sendPcm(pcm);
  }

  // int16 PCM in binary messages of PCM_PIECE_SAMPLES at most; false once the session stopped taking audio.
  sendPcm(pcm) {
    for (let offset = 0; offset < pcm.length; offset += PCM_PIECE_SAMPLES) {
      if (!this.sendAudio(pcm.slice(offset, offset + PCM_PIECE_SAMPLES).buffer)) return false;
    }
    return true;
  }

  // Conversation mode: stop the current utterance; the server answers `interrupted`.
  interrupt() {
    if (!this.isOpen || this.endSent) return;
    this.sendText(JSON.stringify({ type: "interrupt" }));
  }

  // No more audio: the server renders the rest, sends `end` and closes.
  end() {
    if (!this.isOpen || this.endSent) return;
    this.endSent = true;
    this.sendText(JSON.stringify({ type: "end" }));
  }

  // One JSON message from the server.
  receiveText(data) {
    const h = this.handlers;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.fail(new LipsyncError("bad_server_message", "The server sent a message that is not JSON."));
      return;
    }
    switch (msg.type) {
      case "ready":
        this.ready = msg;
        h.onReady?.(msg);
        break;
      case "stats":
        h.onStats?.(msg);
        break;
      case "interrupted":
        h.onInterrupted?.(msg);
        break;
      case "end":
        this.ended = true;
        h.onEnd?.(msg);
        break;
      case "error":
        this.fail(new LipsyncError(msg.code || "error", msg.message || `The server reported ${msg.code}.`));
        break;
      default:
        // A newer server may add message types; ignoring them keeps this page working.
        console.info("lipsync: ignoring server message of type", msg.type);
    }
  }

  fail(error) {
    if (this.failed) return;
    this.failed = true;
    this.handlers.onError?.(error);
  }
}

// One session on WS /ws/stream: fMP4 in binary messages. Callbacks besides SessionBase's:
//   onInit(ArrayBuffer) — the first binary message, onSegment(ArrayBuffer) — every later one.
export class StreamSession extends SessionBase {
  constructor({ url = streamUrl(), avatarId, audio, options, mode = "clip", handlers }) {
    super({ avatarId, audio, options, mode, handlers });
    this.transport = "websocket";
    this.url = url;
    this.socket = null;
    this.gotInit = false;
  }

  // Opens the socket and sends `start`; resolves once it is sent (the answer arrives through the handlers).
  open() {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(this.url);
      } catch (err) {
        reject(new LipsyncError("network", `Could not open the stream: ${err.message}`, "network"));
        return;
      }
      this.socket = socket;
      socket.binaryType = "arraybuffer";
      let opened = false;
      socket.onopen = () => {
        opened = true;
        socket.send(JSON.stringify(this.start));
        resolve();
      };
      socket.onmessage = (event) => this.receive(event.data);
      // onerror carries no detail; the close event that always follows has the code.
      socket.onclose = (event) => {
        if (!opened) {
          this.failed = true; // reported through the rejection, not onError
          reject(new LipsyncError(`close_${event.code}`, `Could not connect to ${this.url.split("?")[0]}.`, "connection"));
          this.handlers.onClose?.({ code: event.code, reason: event.reason });
        } else {
          this.closed(event);
        }
      };
    });
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  sendText(text) {
    this.socket.send(text);
  }

  sendBinary(buffer) {
    this.socket.send(buffer);
  }

  // Sends a whole audio file in binary messages, then `end` (the server decodes it).
  async sendFile(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    for (let offset = 0; offset < bytes.length; offset += FILE_CHUNK_BYTES) {
      if (!this.sendAudio(bytes.slice(offset, offset + FILE_CHUNK_BYTES).buffer)) return;
    }
    this.end();
  }

  // Abandons the session (protocol: closing without `end`).
  cancel() {
    this.cancelled = true;
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, "cancelled by the user");
  }

  receive(data) {
    if (typeof data === "string") {
      this.receiveText(data);
    } else if (!this.gotInit) {
      this.gotInit = true;
      this.handlers.onInit?.(data);
    } else {
      this.handlers.onSegment?.(data);
    }
  }

  closed(event) {
    if (!(this.ended || this.cancelled || this.failed)) {
      const meaning = CLOSE_MEANINGS[event.code] || `The connection closed (code ${event.code}).`;
      const reason = event.reason ? ` (${event.reason})` : "";
      this.fail(new LipsyncError(`close_${event.code}`, `${meaning}${reason}`, "connection"));
    }
    this.handlers.onClose?.({ code: event.code, reason: event.reason });
  }
}
