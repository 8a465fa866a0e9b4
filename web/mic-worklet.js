// AudioWorklet processor: microphone samples at the context's rate → 16 kHz mono int16 (little-endian) chunks.
//
// Runs on the audio rendering thread. The context runs at the device rate (44.1/48 kHz usually); asking for a
// 16 kHz AudioContext would make some browsers refuse a microphone source of another rate, so the resampling
// happens here: a windowed-sinc low-pass interpolator (Blackman window), cut-off just under 8 kHz, whose
// kernel is tabulated for 256 sub-sample phases. Channels are averaged to mono.
//
// Messages to the main thread: {type: "pcm", pcm: ArrayBuffer (int16), level: RMS 0..1} every `chunkSamples`
// output samples, and {type: "flushed", pcm, level} once, answering a "flush" message (the partial last chunk).

const PHASES = 256;
const ZERO_CROSSINGS = 8; // kernel half-width, in output samples

class SincResampler {
  constructor(inputRate, outputRate) {
    this.step = inputRate / outputRate; // input samples per output sample
    // Cut-off in cycles per input sample: 0.45 of the lower Nyquist rate (keeps aliasing out of 0–8 kHz).
    const cutoff = 0.45 * Math.min(1, outputRate / inputRate);
    this.half = Math.ceil(ZERO_CROSSINGS / (2 * cutoff)); // input samples each side of the centre
    const taps = 2 * this.half;
    this.table = new Float32Array((PHASES + 1) * taps);
    for (let p = 0; p <= PHASES; p++) {
      const frac = p / PHASES;
      let sum = 0;
      for (let j = 0; j < taps; j++) {
        const d = j - this.half + 1 - frac; // distance of tap j from the output position
        const x = 2 * cutoff * d;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = d / (this.half + 1); // -1..1 across the window
        const blackman = 0.42 + 0.5 * Math.cos(Math.PI * w) + 0.08 * Math.cos(2 * Math.PI * w);
        const v = Math.abs(w) >= 1 ? 0 : sinc * blackman;
        this.table[p * taps + j] = v;
        sum += v;
      }
      for (let j = 0; j < taps; j++) this.table[p * taps + j] /= sum; // unit gain at DC for every phase
    }
    this.taps = taps;
    // Input history: the previous `taps` samples are kept so a kernel can straddle render quanta.
    this.buffer = new Float32Array(4096);
    this.length = 0;
    this.position = this.half - 1; // next output position, in buffer samples
  }

  // Appends input samples; calls emit(sample) for every output sample that can be computed.
  push(input, emit) {
    if (this.length + input.length > this.buffer.length) {
      const bigger = new Float32Array(2 * (this.length + input.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    const { buffer, table, taps, half, step } = this;
    while (Math.floor(this.position) + half < this.length) {
      const base = Math.floor(this.position);
      const phase = Math.round((this.position - base) * PHASES);
      const row = phase * taps;
      const first = base - half + 1;
      let acc = 0;
      for (let j = 0; j < taps; j++) acc += buffer[first + j] * table[row + j];
      emit(acc);
      this.position += step;
    }
    // Drop what no later kernel can reach.
    const keepFrom = Math.max(0, Math.floor(this.position) - half + 1);
    if (keepFrom > 0) {
      buffer.copyWithin(0, keepFrom, this.length);
      this.length -= keepFrom;
      this.position -= keepFrom;
    }
  }
}

class Pcm16kProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.targetRate = opts.targetRate || 16000;
    this.chunkSamples = opts.chunkSamples || 640;
    this.resampler = new SincResampler(sampleRate, this.targetRate);
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.mono = new Float32Array(128);
    this.done = false;
    this.emit = (v) => {
      const clipped = v > 1 ? 1 : v < -1 ? -1 : v;
      this.sumSquares += clipped * clipped;
      this.chunk[this.filled++] = clipped < 0 ? Math.round(clipped * 32768) : Math.round(clipped * 32767);
      if (this.filled === this.chunkSamples) this.post("pcm");
    };
    this.port.onmessage = (event) => {
      if (event.data === "flush" && !this.done) {
        this.done = true;
        this.post("flushed");
      }
    };
  }

  post(type) {
    const pcm = this.chunk.slice(0, this.filled).buffer;
    const level = this.filled ? Math.sqrt(this.sumSquares / this.filled) : 0;
    this.port.postMessage({ type, pcm, level }, [pcm]);
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    if (this.done) return false;
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const frames = channels[0].length;
      if (this.mono.length !== frames) this.mono = new Float32Array(frames);
      const mono = this.mono;
      mono.set(channels[0]);
      for (let c = 1; c < channels.length; c++) {
        const ch = channels[c];
        for (let i = 0; i < frames; i++) mono[i] += ch[i];
      }
      if (channels.length > 1) for (let i = 0; i < frames; i++) mono[i] /= channels.length;
      this.resampler.push(mono, this.emit);
    }
    return true;
  }
}

registerProcessor("pcm16k", Pcm16kProcessor);
