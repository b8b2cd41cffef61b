// The "Record" button of the New job section: records the microphone with
// MediaRecorder (WebM with Opus where the browser has it, which Murmur
// decodes) and uploads the recording like a picked file. Recording stops at
// the button, or by itself when the plan's longest audio is reached.

import * as fmt from './format.js';
import { state } from './state.js';
import { $, announce, toast } from './ui.js';

/** Containers in order of preference; the first the browser can record. */
const TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/mp4'];

let active = null; // { recorder, stream, timer, started, limit }

function supported() {
  return typeof window.MediaRecorder === 'function' && !!navigator.mediaDevices?.getUserMedia;
}

function extension(mime) {
  if (mime.startsWith('audio/ogg')) return 'ogg';
  if (mime.startsWith('audio/mp4')) return 'm4a';
  return 'webm';
}

function stamp(date) {
  const p = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}${p(date.getMonth() + 1)}${p(date.getDate())}-${p(date.getHours())}${p(date.getMinutes())}${p(date.getSeconds())}`;
}

function showRecording(on) {
  const button = $('record');
  button.setAttribute('aria-pressed', String(on));
  button.textContent = on ? 'Stop recording' : 'Record';
  $('record-time').hidden = !on;
}

function tick() {
  const seconds = (Date.now() - active.started) / 1000;
  $('record-time').textContent = `Recording ${fmt.duration(seconds)}`;
  if (active.limit && seconds >= active.limit) stop();
}

async function start(onRecorded) {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    toast(err?.name === 'NotAllowedError'
      ? 'The browser was not allowed to use the microphone.'
      : `The microphone could not be opened (${err?.message || err}).`);
    return;
  }
  const mimeType = TYPES.find((t) => window.MediaRecorder.isTypeSupported?.(t)) || '';
  const recorder = new window.MediaRecorder(stream, mimeType ? { mimeType } : {});
  const chunks = [];
  const started = new Date();
  const session = { cancelled: false };
  recorder.addEventListener('dataavailable', (e) => {
    if (e.data.size) chunks.push(e.data);
  });
  recorder.addEventListener('stop', () => {
    for (const track of stream.getTracks()) track.stop();
    if (session.cancelled) return;
    const type = recorder.mimeType || mimeType || 'audio/webm';
    const file = new File(chunks, `recording-${stamp(started)}.${extension(type)}`, { type });
    announce('Recording stopped; uploading it.');
    onRecorded(file);
  });
  active = {
    recorder,
    stream,
    session,
    started: Date.now(),
    limit: state.limits?.max_audio_seconds,
    timer: setInterval(tick, 250),
  };
  // Data every second, so a long recording is not one buffer at the end.
  recorder.start(1000);
  showRecording(true);
  tick();
  announce('Recording. Press Stop recording to upload it.');
}

function stop() {
  if (!active) return;
  const { recorder, timer } = active;
  active = null;
  clearInterval(timer);
  showRecording(false);
  if (recorder.state !== 'inactive') recorder.stop();
}

/** Wires the button; `onRecorded(file)` uploads what was recorded. */
export function wireRecorder(onRecorded) {
  const button = $('record');
  if (!supported()) {
    button.disabled = true;
    $('record-hint').textContent = 'This browser cannot record audio.';
    return;
  }
  button.addEventListener('click', () => (active ? stop() : start(onRecorded)));
}

/** Stops a recording without uploading it (sign-out). */
export function cancelRecording() {
  if (!active) return;
  const { recorder, stream, timer, session } = active;
  active = null;
  session.cancelled = true;
  clearInterval(timer);
  showRecording(false);
  if (recorder.state !== 'inactive') recorder.stop();
  for (const track of stream.getTracks()) track.stop();
}
