// The "New job" section: the plan's limits on the form, models and
// workflows to choose from, uploads (picked, dropped, recorded with the
// microphone (recorder.js) or fetched from a URL), the job's parameters and
// an optional callback URL.

import { getJSON, sendJSON, upload } from './api.js';
import * as fmt from './format.js';
import { upsertJob } from './jobs.js';
import { addFile } from './files.js';
import { cancelRecording, wireRecorder } from './recorder.js';
import { emit, fileName, on, state } from './state.js';
import {
  $, announce, busy, copySecret, h, setBar, showError, showSecret, toast,
} from './ui.js';

export function applyLimits(limits) {
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
  const beam = $('beam');
  const widest = fmt.beamLimit(limits);
  beam.max = String(widest);
  if (Number(beam.value) > widest) beam.value = String(widest);
  $('beam-hint').textContent = '1 decodes greedily, the fastest; 5 searches as Whisper-WebUI does, '
    + `at about 1.5 times the time. Your plan allows up to ${widest}.`;
  const translate = document.querySelector('input[name="task"][value="translate"]');
  translate.dataset.planAllows = String(limits.translation !== 'none');
  updateForm();
}

export async function loadModels() {
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

export async function loadWorkflows() {
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
    params.beam_size = Number($('beam').value) || 1;
    params.vad = { enabled: $('vad').checked };
    // Diarized jobs time words anyway (speakers are given per word).
    if ($('words').checked) params.word_timestamps = true;
    params.diarize = { enabled: $('diarize').checked };
    params.separate_bgm = { enabled: $('bgm').checked };
  }
  return params;
}

function stored(record, verb) {
  addFile(record);
  $('file-select').value = record.id;
  $('upload-name').textContent = `${verb} ${record.name}`;
  announce(`${verb} ${record.name}`);
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
    setBar(bar, 100);
    stored(record, 'Uploaded');
  } catch (err) {
    $('upload-name').textContent = `Upload of ${file.name} failed`;
    showError(err);
  }
}

/** The server fetches the audio (its SSRF guard and the plan's limits apply). */
async function fetchFromUrl() {
  const input = $('file-url');
  const url = input.value.trim();
  if (!url || !input.checkValidity()) {
    toast('Enter the http(s) address of an audio or video file.');
    input.focus();
    return;
  }
  const bar = $('upload-bar');
  $('upload').hidden = false;
  $('upload-name').textContent = `Fetching ${url}…`;
  setBar(bar, 0);
  try {
    const record = await sendJSON('POST', '/v1/files', { url });
    setBar(bar, 100);
    stored(record, 'Fetched');
    input.value = '';
  } catch (err) {
    $('upload-name').textContent = 'Fetching the URL failed';
    throw err;
  }
}

function showCallbackSecret(job) {
  if (!job.callback_secret) {
    $('callback-new').hidden = true;
    return;
  }
  // Focus stays with the job that starts; the box says to copy it.
  showSecret('callback-new', 'callback-secret', job.callback_secret, { focus: false });
  announce('Copy the callback signing secret now; it is not shown again.');
}

export function wireJobForm() {
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
  wireRecorder(uploadFile);
  $('file-url-fetch').addEventListener('click', (e) => busy(e.currentTarget, fetchFromUrl));
  $('file-url').addEventListener('keydown', (e) => {
    // Enter fetches the URL instead of submitting the job form.
    if (e.key === 'Enter') {
      e.preventDefault();
      busy($('file-url-fetch'), fetchFromUrl);
    }
  });
  $('callback-copy').addEventListener('click', () => copySecret($('callback-secret'), 'Secret'));
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
      const callback = $('callback-url').value.trim();
      if (callback) body.callback_url = callback;
      const job = await sendJSON('POST', '/v1/jobs', body);
      showCallbackSecret(job);
      upsertJob(job);
      announce(`Job started for ${fileName(job)}`);
      emit('open-job', { id: job.id, focus: false });
    });
  });
  on('limits', applyLimits);
  on('files', renderFileSelect);
}

/** Forgets what the form showed for the session that ended. */
export function resetJobForm() {
  cancelRecording();
  $('callback-new').hidden = true;
  $('callback-secret').value = '';
  $('callback-url').value = '';
  $('file-url').value = '';
}
