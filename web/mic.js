// Microphone capture: getUserMedia → AudioWorklet (mic-worklet.js) → 16 kHz mono int16 PCM chunks.

export const PCM_RATE = 16000;
const CHUNK_SAMPLES = 640; // 40 ms: one video frame's worth at 25 fps
const FLUSH_TIMEOUT_MS = 1000;

export class MicCapture {
  // onChunk(ArrayBuffer of int16 LE samples), onLevel(RMS 0..1)
  constructor({ onChunk, onLevel = () => {} }) {
    this.onChunk = onChunk;
    this.onLevel = onLevel;
    this.stream = null;
    this.context = null;
    this.node = null;
    this.samples = 0; // 16 kHz samples handed to onChunk
    this.flushed = null;
  }

  get seconds() {
    return this.samples / PCM_RATE;
  }

  // Asks for the microphone; throws an Error whose message says what to do when it is refused or missing.
  async start() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser gives no microphone access here (a secure origin — https or localhost — is needed).");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      throw new Error(describeMediaError(err));
    }
    this.context = new AudioContext({ latencyHint: "interactive" });
    await this.context.audioWorklet.addModule(new URL("./mic-worklet.js", import.meta.url));
    const source = this.context.createMediaStreamSource(this.stream);
    this.node = new AudioWorkletNode(this.context, "pcm16k", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRate: PCM_RATE, chunkSamples: CHUNK_SAMPLES },
    });
    let resolveFlushed;
    this.flushed = new Promise((resolve) => {
      resolveFlushed = resolve;
    });
    this.node.port.onmessage = (event) => {
      const { type, pcm, level } = event.data;
      if (pcm.byteLength > 0) {
        this.samples += pcm.byteLength / 2;
        this.onChunk(pcm);
      }
      this.onLevel(level);
      if (type === "flushed") resolveFlushed();
    };
    source.connect(this.node);
    // The node writes silence; connecting it keeps the graph pulling it in every browser.
    this.node.connect(this.context.destination);
    if (this.context.state !== "running") await this.context.resume();
  }

  // Stops capture after handing over the samples still in the worklet.
  async stop() {
    if (this.node && this.flushed) {
      this.node.port.postMessage("flush");
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(resolve, FLUSH_TIMEOUT_MS);
      });
      await Promise.race([this.flushed, timeout]);
      clearTimeout(timer);
    }
    this.release();
  }

  // Releases the device at once (no flush): for cancel and errors.
  release() {
    if (this.node) {
      this.node.port.onmessage = null;
      this.node.disconnect();
      this.node = null;
    }
    if (this.stream) {
      for (const track of this.stream.getTracks()) track.stop();
      this.stream = null;
    }
    if (this.context) {
      this.context.close().catch(() => {});
      this.context = null;
    }
    this.onLevel(0);
  }
}

function describeMediaError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was refused. Allow the microphone for this page (the icon in the address bar), or use an audio file.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect one, or use an audio file.";
    case "NotReadableError":
      return "The microphone is busy or failed to start (another program may be using it).";
    default:
      return `The microphone could not be started: ${err && err.message ? err.message : String(err)}`;
  }
}
