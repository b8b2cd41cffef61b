// Murmur's dashboard. Plain ES modules, no build step: the server embeds
// these files and serves them under a strict CSP (no inline script or style).
//
// Sections: sign in / sign up; new job (upload + parameters or a workflow);
// the live job list; one job's view (transcript, audio, downloads, cancel);
// plan and usage; API keys. Everything comes from the public API.

import {
  ApiError, clearToken, describeError, getBlob, getJSON, getToken, request, sendJSON,
  setToken, setUnauthorizedHandler, upload,
} from './api.js';
import { LiveFeed } from './live.js';
import * as fmt from './format.js';

const $ = (id) => document.getElementById(id);

/** Builds an element: h('li', {class: 'x', onclick: fn}, 'text', child). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// ---------------------------------------------------------------- state

const state = {
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

// Blob URLs made for the audio player and downloads; revoked on sign-out
// or when replaced.
let audioUrl = null; // blob URL of the player's audio
let audioUrlFile = null; // the file it holds
let audioFileId = null; // the file being fetched or held
const resultCache = new Map(); // job id -> result JSON

// ---------------------------------------------------------------- messages

function toast(message, kind = 'error') {
  const box = $('toasts');
  const item = h('div', { class: `toast ${kind}` },
    h('span', {}, message),
    h('button', {
      type: 'button', class: 'link', 'aria-label': 'Dismiss message',
      onclick: () => item.remove(),
    }, '×'));
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 15_000 : 5_000);
}

function showError(err) {
  if (err instanceof ApiError && err.status === 401 && getToken()) return; // signs out
  toast(describeError(err));
}

function announce(text) {
  // Clear first so repeating the same words is read again.
  const a = $('announcer');
  a.textContent = '';
  setTimeout(() => {
    a.textContent = text;
  }, 50);
}

/** Runs an async action with its button busy; problems are shown. */
async function busy(button, fn) {
  if (button) {
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
  }
  try {
    return await fn();
  } catch (err) {
    showError(err);
    return undefined;
  } finally {
    if (button) {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  }
}

// ---------------------------------------------------------------- auth

function showAuth(message) {
  $('app').hidden = true;
  $('who').hidden = true;
  $('auth').hidden = false;
  if (message) toast(message, 'info');
  $('login-email').focus();
}

function selectAuthTab(which) {
  const login = which === 'login';
  $('tab-login').setAttribute('aria-selected', String(login));
  $('tab-signup').setAttribute('aria-selected', String(!login));
  $('tab-login').tabIndex = login ? 0 : -1;
  $('tab-signup').tabIndex = login ? -1 : 0;
  $('login-form').hidden = !login;
  $('signup-form').hidden = login;
}

function wireAuth() {
  $('tab-login').addEventListener('click', () => selectAuthTab('login'));
  $('tab-signup').addEventListener('click', () => selectAuthTab('signup'));
  for (const tab of [$('tab-login'), $('tab-signup')]) {
    tab.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        const next = tab.id === 'tab-login' ? 'signup' : 'login';
        selectAuthTab(next);
        $(`tab-${next}`).focus();
      }
    });
  }
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const button = e.submitter;
    busy(button, async () => {
      const body = await sendJSON('POST', '/v1/auth/login', {
        email: $('login-email').value,
        password: $('login-password').value,
      }, { auth: false });
      setToken(body.token);
      $('login-password').value = '';
      await enterApp();
    });
  });
  $('signup-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy(e.submitter, async () => {
      const body = await sendJSON('POST', '/v1/auth/signup', {
        tenant: $('signup-tenant').value,
        email: $('signup-email').value,
        password: $('signup-password').value,
      }, { auth: false });
      setToken(body.token);
      $('signup-password').value = '';
      await enterApp();
    });
  });
  $('sign-out').addEventListener('click', () => signOut());
  setUnauthorizedHandler(() => signOut('Your session has ended. Please sign in again.'));
}

function signOut(message) {
  session += 1;
  clearToken();
  state.live?.stop();
  state.live = null;
  state.me = null;
  state.jobs.clear();
  state.lastSeq.clear();
  state.files.clear();
  state.selected = null;
  resultCache.clear();
  jobItems.clear();
  olderCursor = undefined;
  filesMissing.clear();
  $('jobs-more').hidden = true;
  $('toasts').replaceChildren();
  $('job-list').replaceChildren();
  $('key-list').replaceChildren();
  $('plan-body').replaceChildren();
  $('new-key').hidden = true;
  $('new-key-token').value = '';
  closeJob();
  if (audioUrl) URL.revokeObjectURL(audioUrl);
  audioUrl = null;
  audioUrlFile = null;
  audioFileId = null;
  $('player').removeAttribute('src');
  showAuth(message);
}

// Counts sign-ins and sign-outs: work begun for one session stops when it
// is over (a sign-out while the page is still loading, say).
let session = 0;

async function enterApp() {
  session += 1;
  const mine = session;
  let me;
  try {
    me = await getJSON('/v1/me');
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // handler signs out
    showAuth();
    showError(err);
    return;
  }
  if (mine !== session) return;
  state.me = me;
  $('toasts').replaceChildren(); // a failed sign-in's message is stale now
  $('auth').hidden = true;
  $('app').hidden = false;
  $('who').hidden = false;
  $('who-tenant').textContent = `${me.tenant.name} · ${me.user.email}`;
  $('who-tier').textContent = `${me.tier} plan`;
  applyLimits(me.limits);
  renderJobs();
  $('main').focus();
  // Live first, so nothing happens unseen between the list and the feed
  // (each time it is subscribed the feed has the list refetched).
  state.live = new LiveFeed(getToken(), {
    onEvent: applyEvent,
    onSync: () => catchUp().catch(showError),
    onState: showConnection,
    // The socket never opened twice in a row: is the token still good?
    onDenied: () => getJSON('/v1/me').catch(showError),
  });
  state.live.start();
  await Promise.all([
    // The plan shows the workflow count, so it waits for the workflows.
    loadJobs(), loadModels(), loadWorkflows().finally(loadPlan), loadFiles(), loadKeys(),
  ].map((p) => p.catch(showError)));
}

function showConnection(s, delay) {
  const el = $('conn');
  el.dataset.state = s;
  el.textContent = {
    connecting: 'Connecting…',
    live: 'Live',
    waiting: `Reconnecting in ${Math.ceil((delay || 0) / 1000)} s`,
    stopped: '',
  }[s];
}

// ---------------------------------------------------------------- new job

function applyLimits(limits) {
  state.limits = limits;
  $('file-limit').textContent = `Up to ${fmt.bytes(limits.max_file_bytes)} and ${fmt.duration(limits.max_audio_seconds)} of audio per file on your plan.`;
  const diarize = $('diarize');
  diarize.disabled = !limits.diarization;
  if (!limits.diarization) diarize.checked = false;
  $('diarize-hint').textContent = limits.diarization ? '' : `Not part of the ${limits.name} plan.`;
  $('diarize-hint').hidden = limits.diarization;
  const bgm = $('bgm');
  bgm.disabled = !limits.bgm_separation;
  if (!limits.bgm_separation) bgm.checked = false;
  $('bgm-hint').textContent = limits.bgm_separation ? '' : `Not part of the ${limits.name} plan.`;
  $('bgm-hint').hidden = limits.bgm_separation;
  const sep = $('job-type').querySelector('option[value="bgm_separation"]');
  sep.disabled = !limits.bgm_separation;
  sep.textContent = limits.bgm_separation
    ? 'Separate voice and music' : 'Separate voice and music (not in your plan)';
  const translate = document.querySelector('input[name="task"][value="translate"]');
  translate.dataset.planAllows = String(limits.translation !== 'none');
  updateForm();
}

async function loadModels() {
  const { items } = await getJSON('/v1/models');
  state.models = items;
  const select = $('model');
  const usable = (m) => m.allowed && m.available;
  select.replaceChildren(...items.map((m) => {
    const notes = [];
    if (m.default) notes.push('default');
    if (!m.allowed) notes.push('not in your plan');
    else if (!m.available) notes.push('not installed');
    return h('option', { value: m.id, disabled: !usable(m) },
      notes.length ? `${m.id} (${notes.join(', ')})` : m.id);
  }));
  const pick = items.find((m) => m.default && usable(m)) || items.find(usable);
  if (pick) select.value = pick.id;
  const n = items.filter(usable).length;
  $('model-hint').textContent = n
    ? `${n} of ${items.length} models are available on your plan.`
    : 'No model is available on your plan.';
  updateForm();
}

async function loadWorkflows() {
  const { items } = await getJSON('/v1/workflows?limit=200');
  state.workflows = items;
  const select = $('workflow');
  const keep = select.value;
  select.replaceChildren(
    h('option', { value: '' }, 'None: use the settings below'),
    ...items.map((w) => h('option', { value: w.id }, w.name)),
  );
  select.value = items.some((w) => w.id === keep) ? keep : '';
  updateForm();
}

async function loadFiles() {
  const { items } = await getJSON('/v1/files?limit=200');
  for (const f of items) state.files.set(f.id, f);
  renderFileSelect();
  // Jobs may have been listed before their files' names were known.
  for (const id of state.jobs.keys()) renderJob(id);
}

function renderFileSelect(selectId) {
  const select = $('file-select');
  const keep = selectId || select.value;
  const files = [...state.files.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
  select.replaceChildren(
    h('option', { value: '' }, files.length ? 'Choose a file' : 'Upload a file first'),
    ...files.map((f) => h('option', { value: f.id },
      `${f.name} (${f.duration_s != null ? fmt.duration(f.duration_s) : fmt.bytes(f.size)})`)),
  );
  select.value = state.files.has(keep) ? keep : '';
}

function updateForm() {
  const type = $('job-type').value;
  const usingWorkflow = $('workflow').value !== '';
  $('params').disabled = usingWorkflow;
  for (const el of document.querySelectorAll('.for-transcription')) {
    el.hidden = type !== 'transcription';
  }
  const model = state.models.find((m) => m.id === $('model').value);
  const translate = document.querySelector('input[name="task"][value="translate"]');
  const canTranslate = translate.dataset.planAllows !== 'false' && !model?.english_only;
  translate.disabled = !canTranslate;
  if (!canTranslate && translate.checked) {
    document.querySelector('input[name="task"][value="transcribe"]').checked = true;
  }
  // Hints of disabled checkboxes stay hidden when they say nothing.
  for (const id of ['diarize-hint', 'bgm-hint']) {
    if (!$(id).textContent) $(id).hidden = true;
  }
}

function jobParams() {
  const type = $('job-type').value;
  const params = { job_type: type };
  if (type === 'transcription') {
    params.model = $('model').value;
    params.task = document.querySelector('input[name="task"]:checked').value;
    const lang = $('language').value.trim().toLowerCase();
    params.language = lang || null;
    params.vad = { enabled: $('vad').checked };
    params.diarize = { enabled: $('diarize').checked };
    params.separate_bgm = { enabled: $('bgm').checked };
  }
  return params;
}

async function uploadFile(file) {
  const max = state.limits?.max_file_bytes;
  if (max && file.size > max) {
    // The server refuses it too (413); saying so now spares the upload.
    toast(`${file.name} is ${fmt.bytes(file.size)}; your plan takes files up to ${fmt.bytes(max)}.`);
    return;
  }
  const bar = $('upload-bar');
  $('upload').hidden = false;
  $('upload-name').textContent = `Uploading ${file.name}…`;
  setBar(bar, 0);
  try {
    const record = await upload(file, (p) => setBar(bar, fmt.percent(p)));
    state.files.set(record.id, record);
    renderFileSelect(record.id);
    setBar(bar, 100);
    $('upload-name').textContent = `Uploaded ${record.name}`;
    announce(`Uploaded ${record.name}`);
    loadPlan().catch(() => {});
  } catch (err) {
    $('upload-name').textContent = `Upload of ${file.name} failed`;
    showError(err);
  }
}

function wireJobForm() {
  const input = $('file-input');
  input.addEventListener('change', () => {
    if (input.files[0]) uploadFile(input.files[0]);
    input.value = '';
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = e.dataTransfer?.files?.[0];
    if (file) uploadFile(file);
  });
  for (const id of ['job-type', 'workflow', 'model']) $(id).addEventListener('change', updateForm);
  $('job-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy($('start-job'), async () => {
      const fileId = $('file-select').value;
      if (!fileId) {
        toast('Choose or upload a file first.');
        $('file-select').focus();
        return;
      }
      const workflowId = $('workflow').value;
      const body = workflowId
        ? { file_id: fileId, workflow_id: workflowId }
        : { file_id: fileId, params: jobParams() };
      const job = await sendJSON('POST', '/v1/jobs', body);
      upsertJob(job);
      announce(`Job started for ${fileName(job)}`);
      openJob(job.id, { focus: false });
    });
  });
}

// ---------------------------------------------------------------- job list

const jobItems = new Map(); // job id -> {li, ...parts}

function fileName(job) {
  return state.files.get(job.file_id)?.name || job.file_id;
}

function setBar(bar, pct, text) {
  bar.setAttribute('aria-valuenow', String(pct));
  if (text) bar.setAttribute('aria-valuetext', text);
  bar.firstElementChild.style.width = `${pct}%`;
}

function jobPercent(job) {
  return job.status === 'completed' ? 100 : fmt.percent(job.progress);
}

function statusText(job) {
  if (job.status === 'running' && job.stage) return `running: ${fmt.STAGE_WORDS[job.stage] || job.stage}`;
  return job.status;
}

function upsertJob(job) {
  const old = state.jobs.get(job.id);
  // A terminal state never goes back (a late event cannot undo an end).
  if (old && !fmt.isActive(old.status) && fmt.isActive(job.status)) return;
  state.jobs.set(job.id, { ...old, ...job });
  if (old && old.status !== job.status && !fmt.isActive(job.status)) {
    announce(`${fileName(job)}: ${job.status}`);
    if (job.status === 'completed') loadPlan().catch(() => {});
  }
  if (!state.files.has(job.file_id)) ensureFile(job.file_id);
  renderJob(job.id);
  if (!old) renderJobs();
  if (state.selected === job.id) renderJobView();
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

/** After a reconnect (or on Refresh): everything that may have changed. */
async function catchUp() {
  await Promise.all([loadJobs(), loadFiles(), loadWorkflows().then(loadPlan)]);
}

const PAGE = 50;
let olderCursor; // next_cursor past the pages shown; undefined before the first

/** The newest page of jobs (what changed most likely lives there). */
async function loadJobs() {
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

async function applyEvent(ev) {
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

function renderJobs() {
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
    const title = h('button', { type: 'button', class: 'link job-title', onclick: () => openJob(id) });
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

async function cancelJob(id, button) {
  await busy(button, async () => {
    const job = await sendJSON('POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`);
    upsertJob(job);
    announce(`Cancelling ${fileName(job)}`);
  });
}

// ---------------------------------------------------------------- job view

function openJob(id, { focus = true } = {}) {
  state.selected = id;
  for (const [jid, item] of jobItems) item.li.classList.toggle('selected', jid === id);
  const view = $('job-view');
  view.hidden = false;
  $('transcript').replaceChildren();
  $('transcript-box').hidden = true;
  $('speakers').hidden = true;
  $('downloads').hidden = true;
  view.dataset.rendered = '';
  renderJobView();
  if (focus) {
    view.focus();
    view.scrollIntoView({ block: 'start' });
  }
}

function closeJob() {
  const id = state.selected;
  state.selected = null;
  $('job-view').hidden = true;
  $('player').pause();
  $('player').hidden = true;
  jobItems.get(id)?.li.classList.remove('selected');
  jobItems.get(id)?.title.focus();
}

function renderJobView() {
  const job = state.jobs.get(state.selected);
  if (!job) return;
  const name = fileName(job);
  $('job-title').textContent = name;
  const p = job.params || {};
  const facts = [
    ['Status', statusText(job)],
    ['Type', fmt.JOB_TYPE_WORDS[job.job_type] || job.job_type],
  ];
  if (job.job_type === 'transcription') {
    facts.push(['Model', p.model], ['Task', p.task], ['Language', p.language || 'auto']);
    const extras = [
      p.vad?.enabled && 'skip silence', p.diarize?.enabled && 'speakers',
      p.separate_bgm?.enabled && 'music removed',
    ].filter(Boolean);
    if (extras.length) facts.push(['Options', extras.join(', ')]);
  }
  if (job.workflow_id) {
    facts.push(['Workflow', state.workflows.find((w) => w.id === job.workflow_id)?.name || job.workflow_id]);
  }
  facts.push(['Submitted', fmt.when(job.created_at)]);
  if (job.finished_at) facts.push(['Finished', fmt.when(job.finished_at)]);
  if (job.attempts > 1) facts.push(['Attempts', String(job.attempts)]);
  $('job-facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '–')]));
  const pct = jobPercent(job);
  setBar($('job-bar'), pct, `${pct}%, ${statusText(job)}`);
  $('job-bar').setAttribute('aria-label', `Progress of ${name}`);
  $('job-error').hidden = !job.error;
  $('job-error').textContent = job.error ? `Error: ${job.error}` : '';
  $('job-cancel').hidden = !fmt.isActive(job.status);
  loadAudio(job);
  const view = $('job-view');
  if (job.status === 'completed' && view.dataset.rendered !== job.id) {
    view.dataset.rendered = job.id;
    showResult(job).catch(showError);
  }
}

async function loadAudio(job) {
  const player = $('player');
  if (audioFileId === job.file_id) {
    player.hidden = audioUrlFile !== job.file_id;
    return;
  }
  audioFileId = job.file_id;
  player.hidden = true;
  try {
    const blob = await getBlob(`/v1/files/${encodeURIComponent(job.file_id)}/content`);
    if (audioFileId !== job.file_id) return; // another job was opened meanwhile
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(blob);
    audioUrlFile = job.file_id;
    player.src = audioUrl;
    player.setAttribute('aria-label', `Audio of ${fileName(job)}`);
    player.hidden = false;
  } catch (err) {
    audioFileId = null;
    if (!(err instanceof ApiError && err.status === 404)) showError(err);
  }
}

async function getResult(job) {
  if (!resultCache.has(job.id)) {
    resultCache.set(job.id, await getJSON(`/v1/jobs/${encodeURIComponent(job.id)}/result?format=json`));
  }
  return resultCache.get(job.id);
}

async function showResult(job) {
  const result = await getResult(job);
  if (state.selected !== job.id) return;
  renderDownloads(job, result);
  const list = $('transcript');
  const segments = job.job_type === 'vad'
    ? (result.speech || []).map((s, i) => ({ ...s, text: `Speech region ${i + 1}` }))
    : (result.segments || []);
  list.replaceChildren(...segments.map((seg) => h('li', { 'data-start': seg.start, 'data-end': seg.end },
    h('button', {
      type: 'button',
      class: 'stamp',
      onclick: () => seek(seg.start),
    }, h('span', { class: 'sr-only' }, 'Play '), `${fmt.stamp(seg.start)} – ${fmt.stamp(seg.end)}`),
    seg.speaker ? h('span', { class: 'speaker' }, seg.speaker) : null,
    h('span', { class: 'text' }, seg.text.trim()))));
  $('transcript-box').hidden = segments.length === 0;
  $('transcript-title').textContent = job.job_type === 'vad' ? 'Speech regions' : 'Transcript';
  const speakers = result.speakers || [...new Set(segments.map((s) => s.speaker).filter(Boolean))];
  $('speaker-list').replaceChildren(...speakers.map((s) => h('li', {}, typeof s === 'string' ? s : (s.id || s.name || JSON.stringify(s)))));
  $('speakers').hidden = speakers.length === 0;
}

function seek(seconds) {
  const player = $('player');
  if (!player.src) return;
  player.currentTime = seconds;
  player.play().catch(() => {});
}

function wirePlayer() {
  const player = $('player');
  player.addEventListener('timeupdate', () => {
    const t = player.currentTime;
    for (const li of $('transcript').children) {
      const on = t >= Number(li.dataset.start) && t < Number(li.dataset.end);
      if (on) li.setAttribute('aria-current', 'true');
      else li.removeAttribute('aria-current');
    }
  });
}

function renderDownloads(job, result) {
  const base = fmt.baseName(fileName(job));
  const id = encodeURIComponent(job.id);
  const buttons = [];
  const formats = job.job_type === 'transcription' ? ['json', 'srt', 'vtt', 'txt', 'tsv'] : ['json'];
  for (const f of formats) {
    buttons.push(h('button', {
      type: 'button',
      class: 'secondary',
      'data-format': f,
      onclick: (e) => busy(e.currentTarget, () => download(`/v1/jobs/${id}/result?format=${f}`, `${base}.${f}`)),
    }, f.toUpperCase()));
  }
  if (job.job_type === 'bgm_separation') {
    const stems = (result.stems || []).map((s) => (typeof s === 'string' ? s : s.name)).filter(Boolean);
    for (const stem of stems.length ? stems : ['vocals', 'accompaniment']) {
      buttons.push(h('button', {
        type: 'button',
        class: 'secondary',
        'data-stem': stem,
        onclick: (e) => busy(e.currentTarget, () => download(`/v1/jobs/${id}/stems/${encodeURIComponent(stem)}`, `${base}-${stem}.wav`)),
      }, `${stem} (WAV)`));
    }
  }
  $('download-buttons').replaceChildren(...buttons);
  $('downloads').hidden = false;
}

/** Fetches with the token and saves through a temporary blob link. */
async function download(path, filename) {
  const blob = await getBlob(path);
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, class: 'sr-only' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function wireJobView() {
  $('job-close').addEventListener('click', closeJob);
  $('job-cancel').addEventListener('click', (e) => cancelJob(state.selected, e.currentTarget));
  $('jobs-refresh').addEventListener('click', (e) => busy(e.currentTarget, catchUp));
  $('jobs-more').addEventListener('click', (e) => busy(e.currentTarget, loadOlderJobs));
  $('job-view').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeJob();
  });
  wirePlayer();
}

// ---------------------------------------------------------------- plan and usage

function meterRow(label, used, limit, show) {
  const id = `m-${label.replace(/\W+/g, '-').toLowerCase()}`;
  const text = limit == null ? `${show(used)} (no limit)` : `${show(used)} of ${show(limit)}`;
  const row = h('div', { class: 'meter-row' },
    h('div', { class: 'row' }, h('span', { id }, label), h('span', {}, text)));
  if (limit != null && limit > 0) {
    const m = h('meter', {
      min: '0', max: String(limit), value: String(Math.min(used, limit)),
      high: String(limit * 0.8), optimum: '0', 'aria-labelledby': id,
    });
    row.append(m);
  }
  return row;
}

async function loadPlan() {
  const sub = await getJSON('/v1/subscription');
  const { limits: l, usage: u } = sub;
  const body = $('plan-body');
  const translation = {
    none: 'not included',
    full: 'included',
    limited: `up to ${l.translation_jobs_per_month ?? '–'} a month, files up to ${fmt.duration(l.translation_max_file_seconds)}`,
  }[l.translation] || l.translation;
  const rows = [
    meterRow('Storage', u.storage_bytes, l.storage_bytes, fmt.bytes),
  ];
  if (l.translation === 'limited' && l.translation_jobs_per_month != null) {
    rows.push(meterRow('Translations this month', u.translation_jobs || 0, l.translation_jobs_per_month, String));
  }
  if (l.max_workflows != null) rows.push(meterRow('Workflows', state.workflows.length, l.max_workflows, String));
  const s = sub.subscription || {};
  const facts = [
    ['Plan', sub.tier],
    ['Jobs completed in ' + u.period, String(u.jobs)],
    ['Audio processed in ' + u.period, fmt.duration(u.audio_seconds)],
    ['Jobs at once', String(l.concurrent_jobs)],
    ['Largest file', fmt.bytes(l.max_file_bytes)],
    ['Longest audio', fmt.duration(l.max_audio_seconds)],
    ['Models', (l.models || []).join(', ').replace('*', 'all')],
    ['Speaker diarization', l.diarization ? 'included' : 'not included'],
    ['Music separation', l.bgm_separation ? 'included' : 'not included'],
    ['Translation', translation],
  ];
  if (s.expires_at) facts.push([s.will_renew ? 'Renews' : 'Ends', fmt.day(s.expires_at)]);
  body.replaceChildren(
    ...rows,
    h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
  );
  if (s.billing_issue) {
    body.append(h('p', { class: 'error' },
      'There is a billing issue with your subscription; update your payment details in the store.'));
  }
  $('who-tier').textContent = `${sub.tier} plan`;
  if (sub.tier !== state.limits?.name) applyLimits(l); // the plan changed meanwhile
}

// ---------------------------------------------------------------- API keys

async function loadKeys() {
  const { items } = await getJSON('/v1/api-keys?limit=200');
  $('key-list').replaceChildren(...items.map((k) => h('tr', { 'data-key-id': k.id },
    h('td', { 'data-label': 'Name' }, k.name),
    h('td', { 'data-label': 'Scopes' }, k.scopes?.length ? k.scopes.join(', ') : 'all of yours'),
    h('td', { 'data-label': 'Created' }, fmt.day(k.created_at)),
    h('td', { 'data-label': 'Expires' }, k.expires_at ? fmt.day(k.expires_at) : 'never'),
    h('td', {}, h('button', {
      type: 'button',
      class: 'danger small',
      'aria-label': `Revoke key ${k.name}`,
      onclick: (e) => revokeKey(k, e.currentTarget),
    }, 'Revoke')))));
  $('keys-empty').hidden = items.length > 0;
}

async function revokeKey(key, button) {
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Revoke the key “${key.name}”? Programs using it stop working at once.`)) return;
  await busy(button, async () => {
    await request('DELETE', `/v1/api-keys/${encodeURIComponent(key.id)}`);
    announce(`Key ${key.name} revoked`);
    await loadKeys();
    $('key-name').focus();
  });
}

function wireKeys() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy(e.submitter, async () => {
      const body = { name: $('key-name').value.trim() };
      const scopes = [...document.querySelectorAll('input[name="scope"]:checked')].map((c) => c.value);
      if (scopes.length) body.scopes = scopes;
      const exp = $('key-expires').value;
      if (exp) body.expires_at = new Date(`${exp}T23:59:59`).toISOString();
      const key = await sendJSON('POST', '/v1/api-keys', body);
      $('new-key-token').value = key.token;
      $('new-key').hidden = false;
      $('key-form').reset();
      $('new-key-token').focus();
      $('new-key-token').select();
      announce(`Key ${key.name} created. Copy it now; it is not shown again.`);
      await loadKeys();
    });
  });
  $('new-key-copy').addEventListener('click', async () => {
    const input = $('new-key-token');
    try {
      await navigator.clipboard.writeText(input.value);
      toast('Key copied to the clipboard.', 'info');
    } catch {
      input.focus();
      input.select();
      toast('Copying was refused by the browser; the key is selected, press Ctrl+C (⌘C).', 'info');
    }
  });
  $('plan-refresh').addEventListener('click', (e) => busy(e.currentTarget, loadPlan));
}

// ---------------------------------------------------------------- start

wireAuth();
wireJobForm();
wireJobView();
wireKeys();
if (getToken()) enterApp();
else showAuth();
