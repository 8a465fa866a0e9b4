// An audio file → 16 kHz mono int16 PCM in the browser (for conversation mode, which takes live PCM: a file is
// spoken as one burst, as a TTS engine would push it).

import { PCM_RATE } from "./mic.js";

export async function fileToPcm16k(file) {
  const encoded = await file.arrayBuffer();
  // The browser decodes any format it plays; an OfflineAudioContext at 16 kHz mixes down and resamples.
  const probe = new OfflineAudioContext(1, 1, PCM_RATE);
  const decoded = await probe.decodeAudioData(encoded);
  const length = Math.max(1, Math.ceil(decoded.duration * PCM_RATE));
  const context = new OfflineAudioContext(1, length, PCM_RATE);
  const source = context.createBufferSource();
  source.buffer = decoded;
  source.connect(context.destination);
  source.start();
  const rendered = await context.startRendering();
  const samples = rendered.getChannelData(0);
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i += 1) {
    pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
  }
  return pcm;
}
