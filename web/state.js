// What the signed-in page knows, shared by the sections, and the few
// signals one section gives the others (so no section imports another
// that imports it back).

export const state = {
  me: null,
  jobs: new Map(), // id -> job
  lastSeq: new Map(), // job id -> highest event seq applied
  files: new Map(), // id -> file
  models: [],
  limits: null, // the tier's row (from /v1/me, refreshed with the plan)
  workflows: [],
  selected: null, // job id in the job view
  live: null,
};

const listeners = new Map();

/**
 * Signals: 'limits' (the plan's limits changed), 'usage' (storage or jobs
 * counted changed: reload the plan), 'files' (file names became known),
 * 'open-job' (id), 'job' (id: that job changed).
 */
export function on(signal, fn) {
  if (!listeners.has(signal)) listeners.set(signal, []);
  listeners.get(signal).push(fn);
}

export function emit(signal, detail) {
  for (const fn of listeners.get(signal) || []) fn(detail);
}

/** The name of a job's file, or its id while the name is unknown. */
export function fileName(job) {
  return state.files.get(job.file_id)?.name || job.file_id;
}
