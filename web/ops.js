// The operator's "Workers" view: each inference worker's state, the job it
// runs (tenant, job id, stage, time taken so far), its counts, and the
// requests waiting for a worker by tier, from GET /v1/ops/workers.
//
// The page shows it only when signed in with the server's operator token
// (the `token` of operator.json in its data dir), which the server accepts
// from loopback callers only; a tenant's session never asks for it (app.js
// keeps the two apart), and anyone else gets 404 from the server anyway.
// While shown it is polled every few seconds, and not at all while the tab
// is hidden or after signing out. Limits: a job's time is counted on this
// browser's clock against the server's `since` (the same machine, as the
// route is loopback only); `compute_type` and `models` are shown when the
// server reports them, else "–".

import { ApiError, describeError, request } from './api.js';
import * as fmt from './format.js';
import { $, h } from './ui.js';

const POLL_MS = 3000;

/**
 * Whether this page was reached over loopback, the only way the server
 * takes the operator token: elsewhere the page offers no operator sign-in.
 */
export function onLoopback() {
  const host = window.location.hostname;
  return host === 'localhost' || host.endsWith('.localhost') || host === '[::1]'
    || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

async function fetchWorkers(opts = {}) {
  return (await request('GET', '/v1/ops/workers', opts)).json();
}

/**
 * Whether `token` is the operator's: answers the workers on 200, throws an
 * ApiError otherwise (404 for any other token, or off loopback).
 */
export function checkOperatorToken(token) {
  return fetchWorkers({ token });
}

let active = false; // the view is shown: an operator is signed in
let onRefused = () => {};
let timer = null;
let inflight = null; // the poll's AbortController
let generation = 0; // bumped on stop: a late answer is dropped
const rows = new Map(); // worker index -> {tr, cells: {key: td}}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/** Makes or updates the row of one worker; answers its <tr>. */
function workerRow(w) {
  let row = rows.get(w.index);
  if (!row) {
    // Explicit roles keep the table a table for screen readers on phones,
    // where CSS shows each row as a block (which drops them in some browsers).
    const head = h('th', { scope: 'row', role: 'rowheader', 'data-label': 'Worker' });
    const cells = { index: head };
    const tr = h('tr', { role: 'row', 'data-worker-index': String(w.index) }, head,
      fmt.WORKER_COLUMNS.map(([key, label]) => {
        cells[key] = h('td', { role: 'cell', 'data-label': label, 'data-col': key });
        return cells[key];
      }));
    row = { tr, cells };
    rows.set(w.index, row);
  }
  setText(row.cells.index, String(w.index));
  const texts = fmt.workerCells(w);
  for (const [key] of fmt.WORKER_COLUMNS) {
    const text = texts[key];
    setText(row.cells[key], text);
    row.cells[key].toggleAttribute('data-empty', text === '–'); // phones leave it out
  }
  row.tr.dataset.state = w.state;
  if (w.job?.job_id) row.tr.dataset.jobId = w.job.job_id;
  else delete row.tr.dataset.jobId;
  return row.tr;
}

function render(view) {
  const workers = [...(view.workers || [])].sort((a, b) => a.index - b.index);
  const seen = new Set(workers.map((w) => w.index));
  for (const index of rows.keys()) if (!seen.has(index)) rows.delete(index); // a node left
  const wanted = workers.map(workerRow);
  const body = $('worker-list');
  // Rows are updated in place; the list is rebuilt only when its members
  // change, so a screen reader's place in the table survives a refresh.
  if (wanted.length !== body.children.length || wanted.some((tr, i) => body.children[i] !== tr)) {
    body.replaceChildren(...wanted);
  }
  $('workers-empty').hidden = workers.length > 0;

  const waiting = Object.entries(view.waiting || {}).sort(([a], [b]) => a.localeCompare(b));
  $('waiting-list').replaceChildren(...waiting.flatMap(([tier, n]) => [
    h('dt', {}, tier), h('dd', { 'data-tier': tier }, String(n))]));
  $('waiting-empty').hidden = waiting.length > 0;

  // The one line read out: set only when it changes, so a screen reader
  // hears about workers starting and finishing, not every refresh.
  const busyCount = workers.filter((w) => w.state === 'busy').length;
  const queued = waiting.reduce((sum, [, n]) => sum + n, 0);
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  setText($('workers-summary'), `${plural(workers.length, 'worker', 'workers')}: ${busyCount} busy, `
    + `${workers.length - busyCount} idle; ${plural(queued, 'request', 'requests')} waiting.`);
  setText($('workers-updated'), `Updated ${new Date().toLocaleTimeString()}`);
}

function showProblem(err) {
  const p = $('workers-problem');
  if (!err) {
    p.hidden = true;
    return;
  }
  setText(p, `${describeError(err)}. Trying again every few seconds.`);
  p.hidden = false;
}

async function poll() {
  clearTimeout(timer);
  timer = null;
  if (!active || document.hidden) return;
  inflight?.abort();
  const ctl = new AbortController();
  inflight = ctl;
  const mine = generation;
  try {
    const view = await fetchWorkers({ signal: ctl.signal });
    if (mine !== generation) return;
    render(view);
    showProblem(null);
  } catch (err) {
    if (mine !== generation || err?.name === 'AbortError') return;
    if (err instanceof ApiError && err.status === 404) {
      // The server no longer takes this token: it restarted with a new one.
      onRefused();
      return;
    }
    showProblem(err); // 503 while the pool is busy stopping, a lost network
  } finally {
    if (inflight === ctl) inflight = null;
    if (mine === generation && active && !document.hidden && timer === null) {
      timer = setTimeout(poll, POLL_MS);
    }
  }
}

function halt() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  inflight?.abort();
  inflight = null;
}

/**
 * Shows the view and keeps it current. `refused` runs when the server stops
 * accepting the token (404: it restarted and made a new one).
 */
export function startWorkers({ refused } = {}) {
  onRefused = refused || (() => {});
  active = true;
  $('ops').hidden = false;
  halt();
  poll();
}

/** Stops polling and forgets what was shown (signing out). */
export function resetWorkers() {
  active = false;
  halt();
  rows.clear();
  $('ops').hidden = true;
  $('worker-list').replaceChildren();
  $('waiting-list').replaceChildren();
  $('workers-summary').textContent = '';
  $('workers-updated').textContent = '';
  $('workers-empty').hidden = true;
  $('waiting-empty').hidden = true;
  showProblem(null);
}

export function wireWorkers() {
  $('worker-head').replaceChildren(...[['index', 'Worker'], ...fmt.WORKER_COLUMNS].map(([, label]) => h('th', {
    scope: 'col', role: 'columnheader',
  }, label)));
  $('workers-refresh').addEventListener('click', () => {
    halt();
    poll();
  });
  // A hidden tab is not polled; it catches up the moment it is shown.
  document.addEventListener('visibilitychange', () => {
    if (!active) return;
    halt();
    if (!document.hidden) poll();
  });
}
