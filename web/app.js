// The page: portrait → avatar, speech (microphone or file) → a session → playback and stats. The session runs
// over WS /ws/stream (fMP4 played through Media Source Extensions) or over WebRTC (tracks played as the video's
// srcObject), as the Transport option says.
//
// Test hook: `window.lipsync` = {state, stats, errors, info, avatar, options, ready, end, transport}, kept up to date,
// so tests read the page's state without scraping the DOM. `state` is one of:
//   "idle" (no portrait), "uploading", "ready" (portrait accepted), "connecting", "streaming",
//   "finishing" (end sent, server rendering the rest), "done", "cancelled", "error".

import { MicCapture, PCM_RATE } from "./mic.js";
import { FrameLatency } from "./latency.js";
import { fileToPcm16k } from "./pcm.js";
import { MsePlayer } from "./player.js";
import { StreamSession, isVideo, uploadAvatar } from "./stream.js";
import { $, MessageLog, drawPortrait, formatBytes, formatMs, renderStats } from "./ui.js";
import { RtcSession } from "./webrtc.js";

const STATS_INTERVAL_MS = 250;
const ACTIVE = new Set(["connecting", "streaming", "finishing"]);

const video = $("video");
const log = new MessageLog($("log"), $("error-now"));

function emptyStats() {
  return {
    timeToFirstFrameMs: null, // Start press → first video frame presented
    streamEndMs: null, // Start press → the server's `end`
    delayBehindLiveS: null, // live edge (speech sent, or audio the server has) − playback position
    renderFps: null, // server: frames rendered per second of wall time
    droppedFrames: null, // getVideoPlaybackQuality
    decodedFrames: null,
    bufferedS: null, // buffered media ahead of the playhead
    liveJumps: 0, // times the player skipped forward to catch up with the live edge (media never shown)
    currentTime: 0,
    serverFrames: null,
    serverAudioSeconds: null,
    serverRenderedSeconds: null,
    serverDelayMs: null,
    firstFragmentMs: null,
    glassToGlass: null, // with frame_code: {frames, medianMs, p95Ms, lastMs, interruptsMs, interruptFreezesMs} (latency.js)
    displayedFrame: null, // with frame_code: the number of the last frame displayed (read from its corner)
    audioSecondsSent: 0, // microphone mode: 16 kHz audio handed to the socket (WebRTC: captured while the track was sent)
    segments: 0, // media segments received
    bytes: 0, // media bytes received (init segment included)
    statsMessages: 0,
    // WebRTC sessions: the browser's own figures (RtcSession.webrtcStats: codec, framesDecoded, freezeCount…);
    // null over the WebSocket
    webrtc: null,
  };
}

const hook = {
  state: "idle",
  stats: emptyStats(),
  errors: [], // {source, code, message}, in order
  info: null, // GET /v1/info: what the server offers (demo, engines and their options, limits), read on load
  avatar: null, // the POST /v1/avatars answer
  options: null, // the options of the last `start` message
  ready: null, // the server's `ready` message
  end: null, // the server's `end` message
  interrupted: [], // conversation mode: the server's `interrupted` messages
  utterances: [], // conversation mode: per-utterance figures from the stats (utterance_id, first_frame_ms)
  transport: null, // the transport of the last start: "websocket" or "webrtc"
};
window.lipsync = hook;

// Page-level state (not for tests).
const page = {
  portrait: null, // {file, bitmap}
  recent: [], // [{file, bitmap, thumbUrl}]
  session: null,
  mic: null,
  pendingPcm: [], // microphone audio captured before `ready`
  micFlushed: false, // Stop pressed and the microphone's last samples handed over
  startedAt: 0,
  mode: "mic",
  audioFile: null,
  downloadUrl: null,
  latency: null, // FrameLatency while `frame_code` is measured
  micSamples: 0, // WebRTC microphone: 16 kHz samples captured since the data channel opened (the server's count)
  rtcStatsPending: false, // a getStats() call is under way (one at a time)
  firstRenderedWatched: false, // WebRTC: waiting for the first rendered frame to be presented
};

const player = new MsePlayer(video, {
  onError: (message) => reportError("player", "media_error", message),
  onNotice: (message) => log.add("warn", message),
  onFirstFrame: () => firstFrameShown(),
});

// The first frame of a session is on screen (MSE: the player says so; WebRTC: onTrack watches for it).
function firstFrameShown() {
  hook.stats.timeToFirstFrameMs = performance.now() - page.startedAt;
  $("video-placeholder").hidden = true;
  log.add("info", `First frame after ${Math.round(hook.stats.timeToFirstFrameMs)} ms.`);
  updateStats();
}

// ---------------------------------------------------------------------------------------------------------------
// State, status line, controls

function setState(state, status) {
  hook.state = state;
  document.body.dataset.state = state;
  if (status) $("status").textContent = status;
  updateControls();
}

function updateControls() {
  const active = ACTIVE.has(hook.state);
  const haveAvatar = hook.avatar !== null && hook.state !== "uploading";
  // A conversation starts idle: a file is spoken later (Speak file), so none is needed to start.
  const haveAudio = page.mode === "mic" || page.audioFile !== null || $("opt-mode").value === "conversation";
  $("start").disabled = active || !haveAvatar || !haveAudio;
  const stoppable = page.mode === "mic" || $("opt-mode").value === "conversation";
  $("stop").disabled = !(stoppable && (hook.state === "connecting" || hook.state === "streaming"));
  $("cancel").disabled = !active;
  $("download").disabled = active || player.segments === 0;
  const conversation = $("opt-mode").value === "conversation";
  const talking = conversation && hook.state === "streaming";
  $("speak").hidden = !conversation;
  $("interrupt").hidden = !conversation;
  $("speak").disabled = !talking || page.audioFile === null;
  $("interrupt").disabled = !talking;
  for (const id of ["portrait-input", "audio-input", "opt-enhance", "opt-seed", "opt-chunk", "opt-framing",
    "opt-engine", "opt-mode", "opt-transport"]) {
    $(id).disabled = active;
  }
  for (const control of document.querySelectorAll("[data-option]")) control.disabled = active;
  for (const radio of document.querySelectorAll('input[name="source"]')) radio.disabled = active;
  for (const button of document.querySelectorAll("#recent-list button")) button.disabled = active;
}

function reportError(source, code, message) {
  hook.errors.push({ source, code, message });
  log.add("error", message);
}

function showDemo() {
  const demo = Boolean(
    (hook.info && hook.info.demo) || (hook.avatar && hook.avatar.demo) || (hook.ready && hook.ready.demo),
  );
  $("demo-banner").hidden = !demo;
  $("video-demo-tag").hidden = !demo;
}

// ---------------------------------------------------------------------------------------------------------------
// Portrait

async function choosePortrait(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/") && !isVideo(file)) {
    reportError(
      "client",
      "not_an_image",
      `“${file.name}” is neither a photo nor a video. ` +
        "Choose a JPEG, PNG or WebP photo, or an MP4, WebM or MOV clip.",
    );
    return;
  }
  log.clearAlert();
  hook.avatar = null;
  $("avatar-info").textContent = "";
  $("avatar-info").classList.remove("error-text");
  $("drop-zone").classList.remove("rejected");
  const clip = isVideo(file);
  const looking = clip ? "Looking for the face on every frame of the clip…" : "Looking for a face in the portrait…";
  setState("uploading", looking);
  let bitmap = null;
  try {
    // A photo upright per EXIF, a clip's first frame as the browser shows it: as the server reads them.
    bitmap = clip ? await firstFrame(file) : await createImageBitmap(file);
  } catch {
    bitmap = null; // the server will say what is wrong with it
  }
  const canvas = $("portrait-canvas");
  if (bitmap) {
    drawPortrait(canvas, bitmap);
    canvas.hidden = false;
    $("drop-hint").hidden = true;
  }
  try {
    const avatar = await uploadAvatar(file);
    hook.avatar = avatar;
    page.portrait = { file, bitmap };
    if (bitmap) drawPortrait(canvas, bitmap, avatar);
    const [x0, y0, x1, y1] = avatar.box;
    const more = avatar.faces_seen > 1 ? ` ${avatar.faces_seen} faces seen: the largest is used.` : "";
    const video = avatar.kind === "video";
    const kind = video ? `Clip of ${avatar.duration.toFixed(1)} s (${avatar.frames} frames). ` : "";
    $("avatar-info").textContent = `${kind}Face found: crop ${x1 - x0}×${y1 - y0} px at (${x0}, ${y0}).${more}`;
    remember(file, bitmap);
    fitEnginesTo(avatar);
    showDemo();
    setState("ready", `${video ? "Clip" : "Portrait"} ready. Choose the speech input and press Start.`);
  } catch (err) {
    if (bitmap) drawPortrait(canvas, bitmap);
    canvas.setAttribute("aria-label", "Portrait preview: no usable face (see the message).");
    $("drop-zone").classList.add("rejected");
    $("avatar-info").textContent = err.message;
    $("avatar-info").classList.add("error-text");
    reportError(err.source || "server", err.code || "upload_failed", err.message);
    setState("idle", "Choose another portrait.");
  }
}

// A clip's first frame, decoded by the browser (its rotation applied), for the preview.
async function firstFrame(file) {
  const video = document.createElement("video");
  video.muted = true;
  video.preload = "auto";
  const url = URL.createObjectURL(file);
  try {
    const loaded = new Promise((resolve, reject) => {
      video.addEventListener("loadeddata", resolve, { once: true });
      video.addEventListener("error", () => reject(new Error("the browser cannot decode this clip")), { once: true });
    });
    video.src = url;
    await loaded;
    return await createImageBitmap(video);
  } finally {
    URL.revokeObjectURL(url);
  }
}

function remember(file, bitmap) {
  if (!bitmap || page.recent.some((r) => r.file === file)) return;
  const thumb = document.createElement("canvas");
  const side = 64;
  thumb.width = side;
  thumb.height = side;
  const s = Math.max(side / bitmap.width, side / bitmap.height);
  thumb.getContext("2d").drawImage(bitmap, (side - bitmap.width * s) / 2, (side - bitmap.height * s) / 2,
    bitmap.width * s, bitmap.height * s);
  page.recent.unshift({ file, thumbUrl: thumb.toDataURL("image/png") });
  page.recent = page.recent.slice(0, 6);
  const list = $("recent-list");
  list.replaceChildren();
  for (const entry of page.recent) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "recent-button";
    button.setAttribute("aria-label", `Use portrait ${entry.file.name}`);
    const img = document.createElement("img");
    img.src = entry.thumbUrl;
    img.alt = "";
    button.append(img);
    button.addEventListener("click", () => choosePortrait(entry.file));
    item.append(button);
    list.append(item);
  }
  $("recent").hidden = page.recent.length < 2;
}

// ---------------------------------------------------------------------------------------------------------------
// Options

function readOptions() {
  const chunk = Number($("opt-chunk").value);
  if (!Number.isInteger(chunk) || chunk < 1 || chunk > 25) {
    throw new Error(`Frames per fragment must be a whole number from 1 to 25, not “${$("opt-chunk").value}”.`);
  }
  const seedText = $("opt-seed").value.trim();
  const seed = seedText === "" ? null : Number(seedText);
  if (seed !== null && (!Number.isInteger(seed) || seed < 0)) {
    throw new Error(`The seed must be a whole number of 0 or more (or empty), not “${seedText}”.`);
  }
  const engine = $("opt-engine").value; // empty until GET /v1/info answered: the server's default engine
  const options = {
    ...(engine ? { engine } : {}),
    enhance: $("opt-enhance").checked,
    seed,
    chunk_frames: chunk,
    framing: $("opt-framing").value,
    ...($("opt-frame-code").checked ? { frame_code: true } : {}), // sent only when measuring
  };
  for (const { option, control } of engineControls.get(engine) ?? []) {
    options[option.name] = readControl(option, control);
  }
  return options;
}

// One of the engine's own options, in the type the server expects (a choice's value as the server gave it).
function readControl(option, control) {
  if (option.kind === "checkbox") return control.checked;
  if (option.kind === "choice") return option.choices[control.selectedIndex].value;
  const text = control.value.trim();
  const value = Number(text);
  const fits = text !== "" && Number.isFinite(value) && (!option.integer || Number.isInteger(value)) &&
    (option.min === null || value >= option.min) && (option.max === null || value <= option.max);
  if (!fits) throw new Error(`${option.label} must be ${numberRule(option)}, not “${control.value}”.`);
  return value;
}

function numberRule(option) {
  const kind = option.integer ? "a whole number" : "a number";
  if (option.min !== null && option.max !== null) return `${kind} from ${option.min} to ${option.max}`;
  if (option.min !== null) return `${kind} of ${option.min} or more`;
  if (option.max !== null) return `${kind} of ${option.max} or less`;
  return kind;
}

// ---------------------------------------------------------------------------------------------------------------
// Engines: the choice and each engine's own options, as the server describes them (GET /v1/info), so that the
// page names no engine. Options every engine takes (enhancement, framing, seed…) are the page's own controls.

const engineControls = new Map(); // engine name → [{option, control}], its own options in order

function showEngines(info) {
  const select = $("opt-engine");
  for (const [name, engine] of Object.entries(info.engine_options ?? {})) {
    const item = document.createElement("option");
    item.value = name;
    item.textContent = engine.label;
    // Not served now (Triton lacks its models): it cannot be chosen. None served: the server cannot say yet.
    item.disabled = info.engines.length > 0 && !info.engines.includes(name);
    item.dataset.served = String(!item.disabled);
    item.dataset.video = String(Boolean(engine.takes_video));
    select.append(item);
    const groups = { main: engineGroup(name, $("engine-options")), more: engineGroup(name, $("engine-options-more")) };
    const controls = engine.options.map((option) => {
      const { label, control } = buildControl(name, option);
      groups[option.more ? "more" : "main"].append(label, control);
      return { option, control };
    });
    engineControls.set(name, controls);
  }
  const first = [...select.options].find((item) => !item.disabled); // the server's default comes first
  if (first) select.value = first.value;
  showEngineOptions();
}

// A clip can only be animated by an engine that takes videos: the others are greyed out (and one that does is
// chosen) while the avatar is a clip; a photo gives every served engine back.
function fitEnginesTo(avatar) {
  const select = $("opt-engine");
  for (const item of select.options) {
    item.disabled = item.dataset.served === "false" || (avatar.kind === "video" && item.dataset.video !== "true");
  }
  if (select.selectedOptions[0]?.disabled) {
    const usable = [...select.options].find((item) => !item.disabled);
    if (usable) select.value = usable.value;
    showEngineOptions();
  }
}

// Each engine has its own options: show those of the engine chosen.
function showEngineOptions() {
  const engine = $("opt-engine").value;
  for (const element of document.querySelectorAll("[data-engine]")) {
    element.hidden = element.dataset.engine !== engine;
  }
}

// A grid-transparent container of one engine's controls (shown only while that engine is chosen).
function engineGroup(engine, parent) {
  const group = document.createElement("div");
  group.className = "engine-options";
  group.dataset.engine = engine;
  parent.append(group);
  return group;
}

function buildControl(engine, option) {
  const dashed = option.name.replaceAll("_", "-");
  // Two engines may have an option of the same name: the second's id names its engine.
  const id = document.getElementById(`opt-${dashed}`) ? `opt-${engine}-${dashed}` : `opt-${dashed}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = option.label;
  let control;
  if (option.kind === "choice") {
    control = document.createElement("select");
    for (const choice of option.choices) {
      const item = document.createElement("option");
      item.value = String(choice.value);
      item.textContent = choice.label;
      item.selected = choice.value === option.default;
      control.append(item);
    }
  } else if (option.kind === "checkbox") {
    control = document.createElement("input");
    control.type = "checkbox";
    control.checked = option.default === true;
  } else {
    control = document.createElement("input");
    control.type = option.kind; // "number" or "range"
    if (option.min !== null) control.min = String(option.min);
    if (option.max !== null) control.max = String(option.max);
    control.step = option.step === null ? "any" : String(option.step);
    if (option.default !== null) control.value = String(option.default);
    if (option.integer) control.inputMode = "numeric";
  }
  if (option.kind === "number" && option.min !== null && option.max !== null) {
    label.append(` (${option.min}–${option.max})`);
  }
  if (option.kind === "range") {
    // The slider's value, beside its name.
    const output = document.createElement("output");
    output.id = `${id}-value`;
    output.setAttribute("for", id);
    const decimals = Number.isInteger(option.step) ? 0 : (String(option.step).split(".")[1] ?? "").length;
    const show = () => {
      output.textContent = Number(control.value).toFixed(decimals);
    };
    control.addEventListener("input", show);
    label.append(" ", output);
    show();
  }
  if (option.hint) {
    const hint = document.createElement("span");
    hint.className = "hint-inline";
    hint.textContent = option.hint;
    label.append(" ", hint);
  }
  control.id = id;
  control.dataset.option = option.name;
  return { label, control };
}

// ---------------------------------------------------------------------------------------------------------------
// A session

async function start() {
  if (ACTIVE.has(hook.state) || !hook.avatar) return;
  let options;
  try {
    options = readOptions();
  } catch (err) {
    reportError("client", "bad_option", err.message);
    return;
  }
  const rtc = $("opt-transport").value === "webrtc";
  log.clearAlert();
  resetDownload();
  hook.options = options;
  hook.transport = rtc ? "webrtc" : "websocket";
  hook.stats = emptyStats();
  hook.ready = null;
  hook.end = null;
  hook.interrupted = [];
  hook.utterances = [];
  player.reset();
  detachStream();
  showPlaceholder("Waiting for the first frames…");
  page.pendingPcm = [];
  page.micFlushed = false;
  page.micSamples = 0;
  page.firstRenderedWatched = false;
  page.startedAt = performance.now();
  const mic = page.mode === "mic";
  const mode = $("opt-mode").value;
  page.latency?.stop();
  page.latency = options.frame_code ? new FrameLatency(video) : null;
  if (page.latency && !page.latency.start()) {
    log.add("warn", "This browser cannot say when a frame is displayed: glass-to-glass latency is not measured.");
    page.latency = null;
  }
  video.muted = mic; // your own voice a second late, and echo into the microphone: start muted
  // WebRTC takes live PCM only (a file is decoded in the page); over the WebSocket the server decodes a file.
  const audio = mic || mode === "conversation" || rtc
    ? { format: "pcm_s16le", sample_rate: PCM_RATE, channels: 1 }
    : { format: "file" };
  setState("connecting", mic ? "Connecting… (allow the microphone if asked)" : "Connecting…");

  const handlers = {
    onReady: (msg) => onReady(session, msg),
    onInit: (data) => onMedia(session, data),
    onSegment: (data) => onMedia(session, data),
    onTrack: (stream) => onTrack(session, stream),
    onStats: (msg) => onStats(session, msg),
    onInterrupted: (msg) => onInterrupted(session, msg),
    onEnd: (msg) => onEnd(session, msg),
    onError: (err) => onSessionError(session, err),
    onClose: () => onClose(session),
  };
  const fields = { avatarId: hook.avatar.avatar_id, audio, options, mode, handlers };
  const session = rtc ? new RtcSession(fields) : new StreamSession(fields);
  page.session = session;

  // Over the WebSocket the socket opens while the microphone starts (what it captures before `ready` is held
  // back); over WebRTC the microphone's track must be in the offer, so the device comes first.
  let opening = rtc ? null : session.open();
  let microphone = null; // WebRTC: the stream whose track is sent
  if (mic) {
    const capture = new MicCapture({
      onChunk: (pcm) => onMicChunk(session, capture, pcm),
      onLevel: (level) => {
        $("mic-level").value = Math.min(1, level * 4); // speech RMS is small; scaled so it is visible
      },
    });
    page.mic = capture;
    try {
      microphone = await startMicrophone(capture, rtc);
    } catch (err) {
      capture.release();
      page.mic = null;
      if (page.session === session && ACTIVE.has(hook.state)) {
        session.cancel();
        reportError("microphone", "microphone", err.message);
        setState("error", "The microphone could not be used.");
      }
      return;
    }
    if (page.mic !== capture) capture.release(); // the session ended (error, cancel) while the device started
  }
  if (rtc) {
    if (page.session !== session || !ACTIVE.has(hook.state)) {
      for (const track of microphone?.getTracks() || []) track.stop(); // cancelled while the device started
      return;
    }
    opening = session.open({ microphone });
  }
  try {
    await opening;
  } catch (err) {
    if (page.session === session && ACTIVE.has(hook.state)) {
      stopMic(false);
      reportError(err.source || "connection", err.code || "connect_failed", err.message);
      const refused = err.source === "server"; // WebRTC: the offer was refused, in the server's words
      setState("error", refused ? "The server refused the session (see Messages)." : "Could not connect to the server.");
    }
  }
}

// The microphone: MicCapture gives the level meter, the seconds sent, the glass-to-glass marks and, over the
// WebSocket, the PCM itself. Over WebRTC a second stream of the same device is returned, whose track the browser
// encodes (Opus) with its own echo cancellation, noise suppression and gain control. Throws an Error whose
// message says what to do when the microphone is refused or missing.
async function startMicrophone(capture, rtc) {
  const asks = [capture.start()];
  if (rtc) {
    asks.push((async () => navigator.mediaDevices.getUserMedia({
      // channelCount as MicCapture asks, so that the browser can share one capture of the device
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    }))());
  }
  const [captured, sent] = await Promise.allSettled(asks);
  if (captured.status === "rejected" || (sent && sent.status === "rejected")) {
    if (sent && sent.status === "fulfilled") for (const track of sent.value.getTracks()) track.stop();
    if (captured.status === "rejected") throw captured.reason; // MicCapture's message says what to do
    throw new Error(`The microphone could not be started for WebRTC: ${sent.reason.message || sent.reason}`);
  }
  return sent ? sent.value : null;
}

function onMicChunk(session, capture, pcm) {
  if (page.session !== session) return;
  const samples = pcm.byteLength / 2;
  if (session.transport === "webrtc") {
    // The track carries the audio. The server counts its samples from the first packets, which flow as the
    // data channel opens: the page counts from then on too, so that frame n's audio is the n-th 640 samples
    // here as there (glass-to-glass marks). Nothing counts after `end` (the server ignores what trails it).
    if (!session.isOpen || session.endSent) return;
    page.micSamples += samples;
    page.latency?.noteAudio(samples);
    hook.stats.audioSecondsSent = page.micSamples / PCM_RATE;
    return;
  }
  page.latency?.noteAudio(samples);
  if (session.ready) session.sendAudio(pcm);
  else page.pendingPcm.push(pcm);
  hook.stats.audioSecondsSent = capture.seconds;
}

function onReady(session, msg) {
  if (page.session !== session) return;
  hook.ready = msg;
  showDemo();
  if (msg.width > 0 && msg.height > 0) $("video-wrap").style.aspectRatio = `${msg.width} / ${msg.height}`;
  const mic = page.mode === "mic";
  const conversation = msg.mode === "conversation";
  if (session.transport === "websocket") {
    // A conversation sends speech up to max_ahead_ms before it is due and idle frames once their silence is
    // overdue (docs/protocol.md): the buffer swings by that much, which is not falling behind.
    const fragmentS = hook.options.chunk_frames / msg.fps; // the chunk this session asked for
    const swingS = conversation ? (msg.limits.max_ahead_ms + msg.lookahead_ms) / 1000 + 2 * fragmentS : 0;
    player.open(msg.mime_type, { live: mic || conversation, swingS }).catch((err) => {
      reportError("player", "unsupported_media", err.message);
      session.cancel();
      stopMic(false);
      setState("error", "This browser cannot play the stream.");
    });
  }
  const lookahead = msg.lookahead_ms ? ` Lookahead ${Math.round(msg.lookahead_ms)} ms.` : "";
  const over = session.transport === "webrtc" ? " over WebRTC" : "";
  log.add("info", `Session ${msg.session_id}${over}: ${msg.width}×${msg.height} at ${msg.fps} fps, seed ${msg.seed}.${lookahead}`);
  if (msg.warning) log.add("warn", msg.warning);
  if (conversation && !mic) {
    setState("streaming", "Conversation: the avatar waits. Speak file pushes the audio file; Stop ends.");
    return;
  }
  if (mic) {
    for (const pcm of page.pendingPcm) session.sendAudio(pcm);
    page.pendingPcm = [];
    if (page.micFlushed) session.end(); // Stop was pressed (and the microphone flushed) before the server answered
    if (hook.state === "connecting") {
      setState("streaming", conversation ? "Conversation: speak any time; Stop ends." : "Streaming: speak now, then press Stop.");
    }
  } else {
    setState("streaming", `Sending “${page.audioFile.name}”…`);
    session
      .sendFile(page.audioFile)
      .then(() => {
        if (page.session === session && hook.state === "streaming") {
          setState("finishing", "Audio sent: rendering…");
        }
      })
      .catch((err) => {
        reportError("client", "file_read", `The audio file could not be read: ${err.message}`);
        session.cancel();
        setState("error", "The audio file could not be read.");
      });
  }
}

// WebRTC: the server's tracks, in one stream. The <video> plays it as it comes (no buffer to manage). Until its
// first rendered frame the server shows the portrait itself: that picture ends the placeholder, but the time to
// first frame waits for the avatar's own (watchFirstRendered).
function onTrack(session, stream) {
  if (page.session !== session || video.srcObject === stream) return;
  video.srcObject = stream;
  onNextFrame(() => {
    if (page.session !== session || hook.stats.timeToFirstFrameMs !== null) return;
    $("video-placeholder").hidden = true;
    log.add("info", `The portrait is on screen after ${Math.round(performance.now() - page.startedAt)} ms.`);
  });
  video.play().catch((err) => {
    if (page.session !== session) return;
    if (err.name === "NotAllowedError" && !video.muted) {
      // Autoplay with sound refused: play muted; the viewer can unmute with the video's controls.
      video.muted = true;
      log.add("warn", "The browser blocked playback with sound: the video plays muted (unmute it in the player).");
      video.play().catch((again) => log.add("warn", `Playback did not start: ${again.message}`));
    } else if (err.name !== "AbortError") {
      log.add("warn", `Playback did not start: ${err.message}`);
    }
  });
}

// WebRTC: the server's first `stats` says its first rendered frames were queued for the video track, which takes
// the next one within a frame's time: the next frame presented after it is the first rendered one (a frame or two
// early at worst, where a picture of the portrait was already on its way).
function watchFirstRendered(session, msg) {
  if (page.firstRenderedWatched || !(msg.frames > 0)) return;
  page.firstRenderedWatched = true;
  onNextFrame(() => {
    if (page.session === session && hook.stats.timeToFirstFrameMs === null) firstFrameShown();
  });
}

// Calls `then` once, when the video presents its next frame ('playing' where the browser cannot say).
function onNextFrame(then) {
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(() => then());
  else if (!video.paused && video.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA) then();
  else video.addEventListener("playing", () => then(), { once: true });
}

// The video leaves the previous WebRTC session's stream (its tracks ended with the connection).
function detachStream() {
  if (video.srcObject) video.srcObject = null;
}

function onMedia(session, data) {
  if (page.session !== session) return;
  player.push(data);
  hook.stats.segments = player.segments;
  hook.stats.bytes = player.bytes;
}

function onInterrupted(session, msg) {
  if (page.session !== session) return;
  hook.interrupted.push(msg);
  page.latency?.interruptedAt(msg.frame);
  // MSE has the next seconds buffered: cut them. WebRTC plays what comes (the server dropped what it held).
  if (session.transport === "websocket") player.cutAhead(msg.next_frame / (hook.ready?.fps || 25));
  log.add("info", `Interrupted: idle from frame ${msg.frame}.`);
}

// Conversation: the chosen audio file as one utterance, pushed at once (as a TTS engine would).
async function speakFile() {
  const session = page.session;
  if (!session || hook.state !== "streaming" || !page.audioFile) return;
  let pcm;
  try {
    pcm = await fileToPcm16k(page.audioFile);
  } catch (err) {
    reportError("client", "file_read", `The audio file could not be decoded here: ${err.message}`);
    return;
  }
  page.utteranceCount = (page.utteranceCount || 0) + 1;
  const id = `file-${page.utteranceCount}`;
  if (session.sendUtterance(id, pcm)) log.add("info", `Speaking “${page.audioFile.name}” (${id}).`);
}

function interrupt() {
  if (page.session && hook.state === "streaming") {
    page.latency?.markInterrupt();
    page.session.interrupt();
  }
}

function onStats(session, msg) {
  if (page.session !== session) return;
  if (session.transport === "webrtc") watchFirstRendered(session, msg);
  for (const figure of msg.utterances || []) {
    hook.utterances.push(figure);
    log.add("info", `Utterance ${figure.utterance_id}: first frame ${Math.round(figure.first_frame_ms)} ms after its audio.`);
  }
  const s = hook.stats;
  s.statsMessages += 1;
  s.serverFrames = msg.frames ?? s.serverFrames;
  s.renderFps = typeof msg.render_fps === "number" ? msg.render_fps : s.renderFps;
  s.serverDelayMs = typeof msg.delay_ms === "number" ? msg.delay_ms : s.serverDelayMs;
  s.firstFragmentMs = typeof msg.first_fragment_ms === "number" ? msg.first_fragment_ms : s.firstFragmentMs;
  s.serverAudioSeconds = msg.audio_seconds;
  s.serverRenderedSeconds = msg.rendered_seconds;
  updateStats();
}

function onEnd(session, msg) {
  if (page.session !== session) return;
  hook.end = msg;
  hook.stats.streamEndMs = performance.now() - page.startedAt;
  stopMic(false);
  const duration = typeof msg.duration === "number" ? `${msg.duration.toFixed(2)} s` : "?";
  log.add("info", `Stream complete: ${msg.frames} frames, ${duration}.`);
  if (session.transport === "webrtc") {
    // Played live, nothing recorded: no replay, no download. The session closes the connection itself.
    setState("done", "Done. (WebRTC plays live: nothing was recorded to replay or download.)");
    return;
  }
  player.finish();
  setState("done", "Done. Play it again with the video's controls, or download it.");
}

function onSessionError(session, err) {
  if (page.session !== session) return;
  stopMic(false);
  reportError(err.source || "server", err.code, err.message);
  keepWhatArrived();
  setState("error", "The session stopped with an error (see Messages).");
}

// After an error or a cancel: what arrived stays playable; with no media at all (and always over WebRTC, whose
// tracks end with the connection), the video panel is cleared.
function keepWhatArrived() {
  if (player.segments > 0) {
    player.finish();
  } else {
    player.reset();
    detachStream();
    showPlaceholder("The talking portrait appears here.");
  }
}

function showPlaceholder(text) {
  $("video-placeholder").textContent = text;
  $("video-placeholder").hidden = false;
}

function onClose(session) {
  if (page.session !== session) return;
  stopMic(false);
  updateControls();
}

async function stop() {
  const session = page.session;
  if (!session || !(hook.state === "connecting" || hook.state === "streaming")) return;
  setState("finishing", "Stopped: rendering the rest…");
  if (session.transport === "webrtc") {
    // The track carries the audio: nothing to flush; `end` goes at once and the track stops after it.
    stopMic(false);
    page.micFlushed = true;
    if (session.ready) session.end();
    return;
  }
  await stopMic(true);
  page.micFlushed = true;
  // Stopped before the server answered: onReady sends what was captured, then `end`.
  if (session.ready) session.end();
}

async function stopMic(flush) {
  const mic = page.mic;
  if (!mic) return;
  page.mic = null;
  if (flush) await mic.stop();
  else mic.release();
  // WebRTC: onMicChunk counted what the server hears (from the data channel's opening on), not all captured.
  if (page.session?.transport !== "webrtc") hook.stats.audioSecondsSent = mic.seconds;
}

function cancel() {
  const session = page.session;
  if (!session || !ACTIVE.has(hook.state)) return;
  session.cancel();
  stopMic(false);
  keepWhatArrived();
  log.add("warn", "Session cancelled.");
  setState("cancelled", "Cancelled. Press Start to try again.");
}

// ---------------------------------------------------------------------------------------------------------------
// Stats and download

function updateStats() {
  const s = hook.stats;
  s.currentTime = video.currentTime;
  if (player.sourceBuffer) {
    s.bufferedS = player.bufferedAhead;
    s.liveJumps = player.liveJumps;
    const quality = player.playbackQuality();
    if (quality) {
      s.droppedFrames = quality.dropped;
      s.decodedFrames = quality.total;
    }
    const liveEdge = page.mode === "mic" ? s.audioSecondsSent : (s.serverAudioSeconds ?? player.bufferedEnd);
    if (ACTIVE.has(hook.state)) s.delayBehindLiveS = Math.max(0, liveEdge - video.currentTime);
  }
  const session = page.session;
  if (session && session.transport === "webrtc") {
    if (video.srcObject && typeof video.getVideoPlaybackQuality === "function") {
      const quality = video.getVideoPlaybackQuality();
      s.droppedFrames = quality.droppedVideoFrames;
      s.decodedFrames = quality.totalVideoFrames;
    }
    refreshWebrtcStats(session);
  }
  if (page.latency) {
    s.glassToGlass = page.latency.summary();
    s.displayedFrame = page.latency.lastFrame;
  }
  renderStats(s);
  $("stat-webrtc-row").hidden = hook.transport !== "webrtc";
  $("stat-webrtc").textContent = describeWebrtc(s.webrtc);
}

// getStats() is asynchronous: one call at a time; its figures land in the stats of the session that asked.
function refreshWebrtcStats(session) {
  if (page.rtcStatsPending) return;
  page.rtcStatsPending = true;
  session
    .webrtcStats()
    .then((figures) => {
      if (page.session === session && figures) hook.stats.webrtc = figures;
    })
    .catch(() => {}) // a connection closing under the call: the last figures stay
    .finally(() => {
      page.rtcStatsPending = false;
    });
}

function describeWebrtc(w) {
  if (!w) return "—";
  const codec = w.codec ? w.codec.replace(/^video\//, "") : "?";
  const parts = [`${codec}, ${w.framesDecoded} frames decoded`];
  if (w.freezeCount !== null) parts.push(`${w.freezeCount} freezes`);
  if (w.jitterBufferMs !== null) parts.push(`jitter buffer ${formatMs(w.jitterBufferMs)}`);
  return parts.join(", ");
}

function resetDownload() {
  if (page.downloadUrl) URL.revokeObjectURL(page.downloadUrl);
  page.downloadUrl = null;
}

function download() {
  if (player.segments === 0) return;
  resetDownload();
  page.downloadUrl = URL.createObjectURL(player.toBlob());
  const a = document.createElement("a");
  a.href = page.downloadUrl;
  const id = hook.ready && hook.ready.session_id ? hook.ready.session_id : new Date().toISOString();
  a.download = `lipsync-${String(id).replace(/[^A-Za-z0-9_-]/g, "-")}.mp4`;
  document.body.append(a);
  a.click();
  a.remove();
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring

function setMode(mode) {
  page.mode = mode;
  $("mic-block").hidden = mode !== "mic";
  $("file-block").hidden = mode !== "file";
  updateControls();
}

$("portrait-input").addEventListener("change", (e) => choosePortrait(e.target.files[0]));
$("audio-input").addEventListener("change", (e) => {
  page.audioFile = e.target.files[0] || null;
  $("audio-info").textContent = page.audioFile
    ? `“${page.audioFile.name}”, ${formatBytes(page.audioFile.size)}.`
    : "WAV, MP3, OGG, WebM… The server decodes it.";
  updateControls();
});
for (const radio of document.querySelectorAll('input[name="source"]')) {
  radio.addEventListener("change", (e) => setMode(e.target.value));
}
$("opt-engine").addEventListener("change", showEngineOptions);
// Each transport's own default chunk (frames per render call): over WebRTC an interrupt takes back the chunks
// not begun, so smaller ones stop the lips sooner (the server's default there is 4 too); over the WebSocket each
// chunk is an fMP4 fragment starting with a keyframe, so 8. A value the user typed is kept.
const CHUNK_DEFAULTS = { websocket: "8", webrtc: "4" };
let transportShown = $("opt-transport").value;
$("opt-transport").addEventListener("change", (e) => {
  if ($("opt-chunk").value === CHUNK_DEFAULTS[transportShown]) $("opt-chunk").value = CHUNK_DEFAULTS[e.target.value];
  transportShown = e.target.value;
});
$("start").addEventListener("click", start);
$("speak").addEventListener("click", speakFile);
$("interrupt").addEventListener("click", interrupt);
$("opt-mode").addEventListener("change", updateControls);
$("stop").addEventListener("click", stop);
$("cancel").addEventListener("click", cancel);
$("download").addEventListener("click", download);

const drop = $("drop-zone");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("dragging");
  if (ACTIVE.has(hook.state)) return;
  const file = e.dataTransfer.files[0];
  if (file) choosePortrait(file);
});

// What the server offers, before anything is chosen: a demo server says so at once; its engines and their
// options become choices (those it does not serve now cannot be chosen). Without it, sessions run the server's
// default engine with its default options.
async function loadInfo() {
  try {
    const response = await fetch("v1/info");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const info = await response.json();
    showEngines(info);
    hook.info = info; // after the controls exist: tests wait for it
    showDemo();
  } catch (err) {
    log.add("warn", `Could not read the server's description (${err.message}); continuing.`);
  }
}

setInterval(updateStats, STATS_INTERVAL_MS);
setMode(document.querySelector('input[name="source"]:checked').value);
setState("idle");
loadInfo();
