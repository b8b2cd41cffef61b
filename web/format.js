// Small, pure formatting helpers (no DOM).

/** 1536 -> "1.5 KB". */
export function bytes(n) {
  if (n == null || Number.isNaN(n)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** Seconds -> "1:02:03" or "2:03". */
export function duration(s) {
  if (s == null || Number.isNaN(s)) return '–';
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${sec}` : `${m}:${sec}`;
}

/** Seconds -> "00:01.20" (a segment timestamp). */
export function stamp(s) {
  const m = Math.floor(s / 60);
  const rest = (s - m * 60).toFixed(2).padStart(5, '0');
  return `${String(m).padStart(2, '0')}:${rest}`;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

/** An RFC 3339 time: the clock time today, else date and time. */
export function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  const today = new Date();
  return d.toDateString() === today.toDateString() ? timeFmt.format(d) : dateTimeFmt.format(d);
}

export function day(iso) {
  return iso ? dateFmt.format(new Date(iso)) : '–';
}

/** Progress 0..1 -> integer percent, clamped. */
export function percent(p) {
  return Math.max(0, Math.min(100, Math.round((p || 0) * 100)));
}

export const JOB_TYPE_WORDS = {
  transcription: 'Transcription',
  vad: 'Speech regions',
  bgm_separation: 'Voice/music separation',
};

export const STAGE_WORDS = {
  decode: 'decoding',
  separate: 'separating music',
  vad: 'finding speech',
  transcribe: 'transcribing',
  diarize: 'telling speakers apart',
  format: 'formatting',
};

export function isActive(status) {
  return status === 'queued' || status === 'running';
}

/** "talk.final.mp3" -> "talk.final" (for download names). */
export function baseName(name) {
  const n = (name || 'murmur').replace(/[/\\]/g, '_');
  const dot = n.lastIndexOf('.');
  return dot > 0 ? n.slice(0, dot) : n;
}

/** The widest beam search any job may ask for (the server's MAX_BEAM_SIZE). */
export const MAX_BEAM = 10;

/** The plan's widest beam search: its `max_beam_size`, absent meaning MAX_BEAM. */
export function beamLimit(limits) {
  const bound = limits?.max_beam_size;
  return Number.isInteger(bound) ? Math.min(Math.max(bound, 1), MAX_BEAM) : MAX_BEAM;
}

/**
 * The columns of the operator's Workers table after the worker's index,
 * as [key, header]; `workerCells` gives their text for one worker of
 * GET /v1/ops/workers.
 */
export const WORKER_COLUMNS = [
  ['node', 'Node'],
  ['device', 'Device'],
  ['compute', 'Compute type'],
  ['state', 'State'],
  ['job', 'Job'],
  ['tenant', 'Tenant'],
  ['stage', 'Stage'],
  ['elapsed', 'Running for'],
  ['jobs', 'Jobs completed'],
  ['audio', 'Audio processed'],
  ['models', 'Models loaded'],
];

/**
 * One worker's cells by column key, "–" for what it does not report
 * (`compute_type` and `models` are newer than the route). `now` (ms) is
 * when the running job's time is counted to, from its `since`.
 */
export function workerCells(w, now = Date.now()) {
  const job = w.job || null;
  const since = job?.since ? Date.parse(job.since) : NaN;
  let models = '–';
  if (Array.isArray(w.models)) models = w.models.length ? w.models.join(', ') : 'none';
  return {
    node: w.node || '–',
    device: w.device || '–',
    compute: w.compute_type || '–',
    state: w.state || '–',
    job: job?.job_id || '–',
    tenant: job?.tenant_id || '–',
    stage: job ? job.stage || 'starting' : '–',
    elapsed: Number.isNaN(since) ? '–' : duration(Math.max(0, (now - since) / 1000)),
    jobs: w.jobs_completed == null ? '–' : String(w.jobs_completed),
    audio: duration(w.audio_seconds),
    models,
  };
}
