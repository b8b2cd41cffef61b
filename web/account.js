// The account sections: plan and usage (limits, meters, subscription) and
// API keys (create with scopes and expiry, shown once; revoke).

import { getJSON, request, sendJSON } from './api.js';
import * as fmt from './format.js';
import { emit, on, state } from './state.js';
import {
  $, announce, busy, copySecret, h, showSecret,
} from './ui.js';

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

export async function loadPlan() {
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
    ['Widest beam search', String(fmt.beamLimit(l))],
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
  if (sub.tier !== state.limits?.name) emit('limits', l); // the plan changed meanwhile
}

export async function loadKeys() {
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

export function wireAccount() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy(e.submitter, async () => {
      const body = { name: $('key-name').value.trim() };
      const scopes = [...document.querySelectorAll('input[name="scope"]:checked')].map((c) => c.value);
      if (scopes.length) body.scopes = scopes;
      const exp = $('key-expires').value;
      if (exp) body.expires_at = new Date(`${exp}T23:59:59`).toISOString();
      const key = await sendJSON('POST', '/v1/api-keys', body);
      $('key-form').reset();
      showSecret('new-key', 'new-key-token', key.token);
      announce(`Key ${key.name} created. Copy it now; it is not shown again.`);
      await loadKeys();
    });
  });
  $('new-key-copy').addEventListener('click', () => copySecret($('new-key-token'), 'Key'));
  $('plan-refresh').addEventListener('click', (e) => busy(e.currentTarget, loadPlan));
  on('usage', () => loadPlan().catch(() => {}));
}

/** Forgets the plan and keys of the session that ended. */
export function resetAccount() {
  $('key-list').replaceChildren();
  $('plan-body').replaceChildren();
  $('new-key').hidden = true;
  $('new-key-token').value = '';
}
