// DOM helpers: the portrait preview, the stats table, the status line and the message log.

export const $ = (id) => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html has no element #${id}`);
  return el;
};

const PREVIEW_MAX_SIDE = 1024; // the preview canvas's pixel size is capped; CSS scales it to the panel

// Draws the portrait, and when `avatar` is given, dims everything outside its crop box and outlines the box.
export function drawPortrait(canvas, bitmap, avatar = null) {
  const scale = Math.min(1, PREVIEW_MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  if (!avatar) {
    canvas.setAttribute("aria-label", `Portrait preview, ${bitmap.width}×${bitmap.height} pixels; looking for a face…`);
    return;
  }
  // The box is in the server's (EXIF-upright) image coordinates; the bitmap is upright too.
  const sx = canvas.width / avatar.width;
  const sy = canvas.height / avatar.height;
  const [x0, y0, x1, y1] = avatar.box;
  const r = { x: x0 * sx, y: y0 * sy, w: (x1 - x0) * sx, h: (y1 - y0) * sy };
  ctx.fillStyle = "rgba(0, 0, 0, 0.45)";
  ctx.fillRect(0, 0, canvas.width, r.y);
  ctx.fillRect(0, r.y + r.h, canvas.width, canvas.height - r.y - r.h);
  ctx.fillRect(0, r.y, r.x, r.h);
  ctx.fillRect(r.x + r.w, r.y, canvas.width - r.x - r.w, r.h);
  const line = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 200));
  ctx.lineWidth = line;
  ctx.strokeStyle = "#ffd23f";
  ctx.strokeRect(r.x + line / 2, r.y + line / 2, r.w - line, r.h - line);
  canvas.setAttribute(
    "aria-label",
    `Portrait preview, ${avatar.width}×${avatar.height} pixels, with the detected face box ` +
      `from (${x0}, ${y0}) to (${x1}, ${y1}) outlined.`,
  );
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "—";
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

export function formatS(s, digits = 2) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  return `${s.toFixed(digits)} s`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

export function renderStats(stats) {
  $("stat-ttff").textContent = formatMs(stats.timeToFirstFrameMs);
  $("stat-delay").textContent = formatS(stats.delayBehindLiveS);
  $("stat-fps").textContent = stats.renderFps === null ? "—" : `${stats.renderFps.toFixed(1)} fps`;
  $("stat-dropped").textContent =
    stats.decodedFrames === null ? "—" : `${stats.droppedFrames} of ${stats.decodedFrames}`;
  $("stat-buffered").textContent = formatS(stats.bufferedS);
  $("stat-frames").textContent = stats.serverFrames === null ? "—" : String(stats.serverFrames);
  $("stat-server-delay").textContent = formatMs(stats.serverDelayMs);
  $("stat-first-fragment").textContent = formatMs(stats.firstFragmentMs);
  const glass = stats.glassToGlass;
  const parts = [];
  if (glass && glass.frames > 0) {
    parts.push(`${formatMs(glass.medianMs)} median, ${formatMs(glass.p95Ms)} p95 (${glass.frames} frames)`);
  }
  if (glass && glass.interruptsMs.length > 0) {
    parts.push(`interrupt → idle ${formatMs(glass.interruptsMs[glass.interruptsMs.length - 1])}`);
  }
  $("stat-glass").textContent = parts.length ? parts.join("; ") : "—";
}

// The message log: every notice and error in words, newest last; errors also go to the alert line.
export class MessageLog {
  constructor(list, alertLine) {
    this.list = list;
    this.alertLine = alertLine;
  }

  add(level, text) {
    const item = document.createElement("li");
    item.className = `log-${level}`;
    const time = document.createElement("time");
    const now = new Date();
    time.dateTime = now.toISOString();
    time.textContent = now.toLocaleTimeString();
    const label = document.createElement("span");
    label.className = "log-level";
    label.textContent = level === "error" ? "Error" : level === "warn" ? "Note" : "Info";
    const body = document.createElement("span");
    body.className = "log-text";
    body.textContent = text;
    item.append(time, " ", label, " ", body);
    this.list.append(item);
    this.list.scrollTop = this.list.scrollHeight; // the log scrolls, not the page
    if (level === "error") {
      this.alertLine.textContent = text;
      this.alertLine.hidden = false;
    }
  }

  clearAlert() {
    this.alertLine.textContent = "";
    this.alertLine.hidden = true;
  }
}
