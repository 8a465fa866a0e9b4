// Glass-to-glass latency, measured on this page's own clock: with the `frame_code` option the server draws each
// frame's number in its top-left corner (docs/protocol.md); when a frame is displayed, the page reads that number
// back and compares the display time with the time the frame's audio was captured (its last sample handed over
// by the microphone). Frames whose audio this page did not capture (a file, an utterance) are not measured.
// An interrupt is timed the same way: from the click to the display of the first idle frame the server names.

const CELL = 8; // pixels per cell side
const BITS = 16;
const WIDTH = (BITS + 2) * CELL; // a white start cell, 16 bits, a black stop cell
const MIDPOINT = (16 + 235) / 2; // between the code's black and white levels
const SAMPLES_PER_FRAME = 640; // 16 kHz / 25 frames per second
const MAX_MARKS = 4096; // capture times kept: minutes of microphone chunks
const MAX_LATENCIES = 3000; // the figures summarise the last two minutes of frames
const AFTER_INTERRUPT_MS = 2000; // how long the idle video is watched for freezes after an interrupt

export class FrameLatency {
  constructor(video) {
    this.video = video;
    const canvas = document.createElement("canvas");
    canvas.width = WIDTH;
    canvas.height = CELL;
    this.context = canvas.getContext("2d", { willReadFrequently: true });
    this.marks = []; // [samples captured so far, performance.now() when they were]
    this.samples = 0;
    this.latencies = [];
    this.lastFrame = null;
    this.running = false;
    this.interrupt = null; // {at: click time, frame: the first idle frame, once the server said}
    this.interrupts = []; // ms from each interrupt to its first idle frame displayed
    this.afterInterrupt = null; // {from, last, longest}: new frames displayed since the first idle one
    this.interruptFreezes = []; // per interrupt, the longest wait for a new frame in the idle video after it
  }

  // The user interrupted at `time`; the server's `interrupted` names the first idle frame later.
  markInterrupt(time = performance.now()) {
    this.interrupt = { at: time, frame: null };
  }

  interruptedAt(frame) {
    if (this.interrupt && this.interrupt.frame === null) this.interrupt.frame = frame;
  }

  // The microphone handed over `count` more samples (16 kHz) at `time`.
  noteAudio(count, time = performance.now()) {
    this.samples += count;
    this.marks.push([this.samples, time]);
    if (this.marks.length > MAX_MARKS) this.marks.splice(0, this.marks.length - MAX_MARKS);
  }

  // Starts reading displayed frames; false where the browser cannot say when a frame is displayed.
  start() {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return false;
    this.running = true;
    this.video.requestVideoFrameCallback((now, meta) => this.onFrame(meta));
    return true;
  }

  stop() {
    this.running = false;
  }

  onFrame(meta) {
    if (!this.running) return;
    const frame = this.read();
    if (frame !== null && frame !== this.lastFrame) {
      this.lastFrame = frame;
      const pending = this.interrupt;
      const shown = meta.expectedDisplayTime;
      if (pending && pending.frame !== null && frame >= pending.frame) {
        this.interrupts.push(shown - pending.at);
        this.interrupt = null;
        this.afterInterrupt = { from: shown, last: shown, longest: 0 };
      } else if (this.afterInterrupt) {
        const watch = this.afterInterrupt;
        watch.longest = Math.max(watch.longest, shown - watch.last);
        watch.last = shown;
        if (shown - watch.from >= AFTER_INTERRUPT_MS) {
          this.interruptFreezes.push(watch.longest);
          this.afterInterrupt = null;
        }
      }
      const captured = this.capturedAt((frame + 1) * SAMPLES_PER_FRAME);
      if (captured !== null) {
        this.latencies.push(meta.expectedDisplayTime - captured);
        if (this.latencies.length > MAX_LATENCIES) this.latencies.shift();
      }
    }
    this.video.requestVideoFrameCallback((now, nextMeta) => this.onFrame(nextMeta));
  }

  // The frame number drawn in the displayed picture, or null when there is none.
  read() {
    this.context.drawImage(this.video, 0, 0, WIDTH, CELL, 0, 0, WIDTH, CELL);
    const pixels = this.context.getImageData(0, 0, WIDTH, CELL).data;
    const bits = [];
    for (let cell = 0; cell < BITS + 2; cell += 1) {
      const at = ((CELL / 2) * WIDTH + cell * CELL + CELL / 2) * 4;
      bits.push((pixels[at] + pixels[at + 1] + pixels[at + 2]) / 3 > MIDPOINT);
    }
    if (!bits[0] || bits[BITS + 1]) return null;
    return bits.slice(1, BITS + 1).reduce((number, bit) => number * 2 + (bit ? 1 : 0), 0);
  }

  // When the microphone had handed over `sampleCount` samples (null if not yet, or no longer known).
  capturedAt(sampleCount) {
    const marks = this.marks;
    if (marks.length === 0 || marks[marks.length - 1][0] < sampleCount || marks[0][0] > sampleCount) return null;
    let low = 0;
    let high = marks.length - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (marks[middle][0] >= sampleCount) high = middle;
      else low = middle + 1;
    }
    return marks[low][1];
  }

  // {frames, medianMs, p95Ms, lastMs, interruptsMs, interruptFreezesMs} of the frames measured so far.
  summary() {
    const sorted = [...this.latencies].sort((a, b) => a - b);
    const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
    const last = this.latencies.length ? this.latencies[this.latencies.length - 1] : null;
    return {
      frames: sorted.length,
      medianMs: at(0.5),
      p95Ms: at(0.95),
      lastMs: last,
      interruptsMs: [...this.interrupts],
      interruptFreezesMs: [...this.interruptFreezes],
    };
  }
}
