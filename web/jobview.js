// One job's view: its facts and progress, the audio player, the transcript
// (select a time to play from there), speakers and downloads.

import { ApiError, getBlob, getJSON } from './api.js';
import * as fmt from './format.js';
import {
  cancelJob, focusJob, jobPercent, markSelected, statusText,
} from './jobs.js';
import { fileName, on, state } from './state.js';
import {
  $, busy, h, setBar, showError,
} from './ui.js';

// Blob URLs made for the audio player and downloads; revoked on sign-out
// or when replaced.
let audioUrl = null; // blob URL of the player's audio
let audioUrlFile = null; // the file it holds
let audioFileId = null; // the file being fetched or held
const resultCache = new Map(); // job id -> result JSON

export function openJob({ id, focus = true }) {
  state.selected = id;
  markSelected(id);
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

export function closeJob() {
  const id = state.selected;
  state.selected = null;
  $('job-view').hidden = true;
  $('player').pause();
  $('player').hidden = true;
  markSelected(null);
  focusJob(id);
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
      p.beam_size > 1 && `beam ${p.beam_size}`,
      p.vad?.enabled && 'skip silence', p.word_timestamps && 'word timings',
      p.diarize?.enabled && 'speakers',
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
    segmentText(seg))));
  $('transcript-box').hidden = segments.length === 0;
  $('transcript-title').textContent = job.job_type === 'vad' ? 'Speech regions' : 'Transcript';
  const speakers = result.speakers || [...new Set(segments.map((s) => s.speaker).filter(Boolean))];
  $('speaker-list').replaceChildren(...speakers.map((s) => h('li', {}, typeof s === 'string' ? s : (s.id || s.name || JSON.stringify(s)))));
  $('speakers').hidden = speakers.length === 0;
}

/** A segment's text; with word timings, one span per word (highlighted as it plays). */
function segmentText(seg) {
  if (!seg.words?.length) return h('span', { class: 'text' }, seg.text.trim());
  return h('span', { class: 'text' }, ...seg.words.flatMap((w, i) => [
    i ? ' ' : null,
    h('span', { class: 'word', 'data-start': w.start, 'data-end': w.end }, w.word.trim()),
  ]));
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
      // The word being said, for eyes only (the segment is what is announced).
      for (const w of li.querySelectorAll('.word')) {
        w.classList.toggle('now', on && t >= Number(w.dataset.start) && t < Number(w.dataset.end));
      }
    }
  });
}

const SUBTITLES = ['srt', 'vtt'];

/** The subtitle layout options as query parameters (empty when unset). */
function subtitleQuery() {
  const params = new URLSearchParams();
  for (const [id, name] of [['sub-width', 'max_line_width'], ['sub-lines', 'max_line_count'], ['sub-words', 'max_words_per_line']]) {
    const input = $(id);
    if (!input.disabled && input.value.trim()) params.set(name, input.value.trim());
  }
  if (!$('sub-highlight').disabled && $('sub-highlight').checked) params.set('highlight_words', 'true');
  const query = params.toString();
  return query ? `&${query}` : '';
}

/** Offers the layout options that need word timings only when the job has them. */
function renderSubtitleLayout(job, result) {
  const box = $('subtitle-layout');
  box.hidden = job.job_type !== 'transcription';
  const timed = (result.segments || []).some((s) => (s.words || []).length > 0);
  for (const input of box.querySelectorAll('[data-needs-words]')) input.disabled = !timed;
  $('sub-hint').textContent = timed
    ? 'Leave a box empty for no limit. One word per line gives one cue per word.'
    : 'Lines per cue, words per line and highlighting need word timings: run the job with “Time each word”.';
}

function renderDownloads(job, result) {
  const base = fmt.baseName(fileName(job));
  const id = encodeURIComponent(job.id);
  const buttons = [];
  const formats = job.job_type === 'transcription' ? ['json', ...SUBTITLES, 'txt', 'tsv'] : ['json'];
  for (const f of formats) {
    buttons.push(h('button', {
      type: 'button',
      class: 'secondary',
      'data-format': f,
      onclick: (e) => busy(e.currentTarget, () => {
        const layout = SUBTITLES.includes(f) ? subtitleQuery() : '';
        return download(`/v1/jobs/${id}/result?format=${f}${layout}`, `${base}.${f}`);
      }),
    }, f.toUpperCase()));
  }
  renderSubtitleLayout(job, result);
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

export function wireJobView() {
  $('job-close').addEventListener('click', closeJob);
  $('job-cancel').addEventListener('click', (e) => cancelJob(state.selected, e.currentTarget));
  $('job-view').addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeJob();
  });
  wirePlayer();
  on('open-job', openJob);
  on('job', (id) => {
    if (state.selected === id) renderJobView();
  });
  on('files', () => {
    if (state.selected) renderJobView();
  });
}

/** Forgets the view, its results and its audio for the session that ended. */
export function resetJobView() {
  resultCache.clear();
  closeJob();
  if (audioUrl) URL.revokeObjectURL(audioUrl);
  audioUrl = null;
  audioUrlFile = null;
  audioFileId = null;
  $('player').removeAttribute('src');
}
