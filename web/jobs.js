// The "Jobs" section: the live list, newest first, kept current by the
// WebSocket feed's events (and refetched after a reconnect), with paging
// to older jobs and cancel buttons.

import { getJSON, sendJSON } from './api.js';
import * as fmt from './format.js';
import { loadFiles } from './files.js';
import {
  emit, fileName, on, state,
} from './state.js';
import {
  $, announce, busy, h, setBar, showError,
} from './ui.js';

const jobItems = new Map(); // job id -> {li, ...parts}

export function jobPercent(job) {
  return job.status === 'completed' ? 100 : fmt.percent(job.progress);
}

export function statusText(job) {
  if (job.status === 'running' && job.stage) return `running: ${fmt.STAGE_WORDS[job.stage] || job.stage}`;
  return job.status;
}

export function upsertJob(job) {
  const old = state.jobs.get(job.id);
  // A terminal state never goes back (a late event cannot undo an end).
  if (old && !fmt.isActive(old.status) && fmt.isActive(job.status)) return;
  state.jobs.set(job.id, { ...old, ...job });
  if (old && old.status !== job.status && !fmt.isActive(job.status)) {
    announce(`${fileName(job)}: ${job.status}`);
    if (job.status === 'completed') emit('usage');
  }
  if (!state.files.has(job.file_id)) ensureFile(job.file_id);
  renderJob(job.id);
  if (!old) renderJobs();
  emit('job', job.id);
}

// A job's file not known yet (uploaded elsewhere): one reload of the list
// at a time, and none for files it did not have (deleted since).
let filesLoading = null;
const filesMissing = new Set();

function ensureFile(id) {
  if (filesMissing.has(id) || filesLoading) return;
  filesLoading = loadFiles()
    .then(() => {
      if (!state.files.has(id)) filesMissing.add(id);
    })
    .catch(() => {})
    .finally(() => {
      filesLoading = null;
    });
}

const PAGE = 50;
let olderCursor; // next_cursor past the pages shown; undefined before the first

/** The newest page of jobs (what changed most likely lives there). */
export async function loadJobs() {
  const { items, next_cursor: next } = await getJSON(`/v1/jobs?limit=${PAGE}`);
  for (const job of items) upsertJob(job);
  // Older pages already shown keep their own cursor.
  if (olderCursor === undefined) olderCursor = next;
  $('jobs-more').hidden = !olderCursor;
  renderJobs();
}

async function loadOlderJobs() {
  if (!olderCursor) return;
  const { items, next_cursor: next } = await getJSON(
    `/v1/jobs?limit=${PAGE}&cursor=${encodeURIComponent(olderCursor)}`,
  );
  for (const job of items) upsertJob(job);
  olderCursor = next;
  $('jobs-more').hidden = !olderCursor;
  renderJobs();
}

/** One event of the live feed, applied once (events carry a sequence). */
export async function applyEvent(ev) {
  const last = state.lastSeq.get(ev.job_id) || 0;
  if (ev.seq <= last) return;
  state.lastSeq.set(ev.job_id, ev.seq);
  const job = state.jobs.get(ev.job_id);
  if (!job) {
    // A job started elsewhere (another user, an API key): fetch it whole.
    try {
      upsertJob(await getJSON(`/v1/jobs/${encodeURIComponent(ev.job_id)}`));
    } catch (err) {
      showError(err);
    }
    return;
  }
  upsertJob({
    ...job,
    status: ev.status,
    stage: ev.stage ?? job.stage,
    progress: ev.progress,
    error: ev.error ?? job.error,
    attempts: ev.attempt ?? job.attempts,
    started_at: job.started_at || (ev.type === 'started' ? ev.at : null),
    finished_at: job.finished_at || (fmt.isActive(ev.status) ? null : ev.at),
  });
}

export function renderJobs() {
  const list = $('job-list');
  const jobs = [...state.jobs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  const wanted = jobs.map((j) => {
    if (!jobItems.has(j.id)) renderJob(j.id);
    return jobItems.get(j.id).li;
  });
  // Reorder only when needed, so focus inside the list is kept.
  if (wanted.some((li, i) => list.children[i] !== li) || list.children.length !== wanted.length) {
    list.replaceChildren(...wanted);
  }
  $('jobs-empty').hidden = jobs.length > 0;
}

function renderJob(id) {
  const job = state.jobs.get(id);
  if (!job) return;
  let item = jobItems.get(id);
  if (!item) {
    const title = h('button', { type: 'button', class: 'link job-title', onclick: () => emit('open-job', { id }) });
    const badge = h('span', { class: 'status' });
    const meta = h('span', { class: 'hint' });
    const bar = h('div', {
      class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0',
    }, h('span'));
    const cancel = h('button', {
      type: 'button', class: 'danger small', onclick: (e) => cancelJob(id, e.currentTarget),
    }, 'Cancel');
    const li = h('li', { class: 'job', 'data-job-id': id },
      h('div', { class: 'row' }, title, badge), meta, h('div', { class: 'row gap' }, bar, cancel));
    item = { li, title, badge, meta, bar, cancel };
    jobItems.set(id, item);
  }
  const name = fileName(job);
  item.title.textContent = name;
  item.title.setAttribute('aria-label', `Open job for ${name}`);
  item.badge.textContent = statusText(job);
  item.badge.dataset.status = job.status;
  const model = job.job_type === 'transcription' && job.params?.model ? ` · ${job.params.model}` : '';
  item.meta.textContent = `${fmt.JOB_TYPE_WORDS[job.job_type] || job.job_type}${model} · ${fmt.when(job.created_at)}`;
  item.bar.setAttribute('aria-label', `Progress of ${name}`);
  const pct = jobPercent(job);
  setBar(item.bar, pct, `${pct}%, ${statusText(job)}`);
  item.cancel.hidden = !fmt.isActive(job.status);
  item.cancel.setAttribute('aria-label', `Cancel job for ${name}`);
  item.li.classList.toggle('selected', state.selected === id);
}

export async function cancelJob(id, button) {
  await busy(button, async () => {
    const job = await sendJSON('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
    upsertJob(job);
    announce(`Cancelling ${fileName(job)}`);
  });
}

/** Marks the job the view shows (none: `null`). */
export function markSelected(id) {
  for (const [jid, item] of jobItems) item.li.classList.toggle('selected', jid === id);
}

/** Moves focus to a job's entry in the list. */
export function focusJob(id) {
  jobItems.get(id)?.title.focus();
}

export function wireJobs(catchUp) {
  $('jobs-refresh').addEventListener('click', (e) => busy(e.currentTarget, catchUp));
  $('jobs-more').addEventListener('click', (e) => busy(e.currentTarget, loadOlderJobs));
  // File names became known: the list names them.
  on('files', () => {
    for (const id of state.jobs.keys()) renderJob(id);
  });
}

/** Forgets the list of the session that ended. */
export function resetJobs() {
  jobItems.clear();
  olderCursor = undefined;
  filesMissing.clear();
  $('jobs-more').hidden = true;
  $('job-list').replaceChildren();
}
