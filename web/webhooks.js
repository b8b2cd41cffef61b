// The "Webhooks" section (admins and owners): endpoints that receive the
// tenant's job events, signed with a secret shown once, and each
// endpoint's recent delivery attempts.

import { getJSON, request, sendJSON } from './api.js';
import * as fmt from './format.js';
import { state } from './state.js';
import {
  $, announce, busy, copySecret, h, showSecret,
} from './ui.js';

export const EVENTS = ['job.queued', 'job.started', 'job.completed', 'job.failed', 'job.cancelled'];
const ROLES = ['admin', 'owner'];

/** Whether the signed-in user may manage webhooks (the API checks too). */
function allowed() {
  return ROLES.includes(state.me?.user?.role);
}

export async function loadWebhooks() {
  $('webhooks').hidden = !allowed();
  if (!allowed()) return;
  const { items } = await getJSON('/v1/webhooks?limit=100');
  $('webhook-list').replaceChildren(...items.map(endpointItem));
  $('webhooks-empty').hidden = items.length > 0;
}

function endpointItem(w) {
  const log = h('div', { class: 'deliveries', id: `deliveries-${w.id}`, hidden: true });
  const toggle = h('button', {
    type: 'button',
    class: 'secondary small',
    'aria-expanded': 'false',
    'aria-controls': log.id,
    'aria-label': `Deliveries to ${w.url}`,
    onclick: (e) => busy(e.currentTarget, () => toggleDeliveries(w, e.currentTarget, log)),
  }, 'Deliveries');
  const remove = h('button', {
    type: 'button',
    class: 'danger small',
    'aria-label': `Delete endpoint ${w.url}`,
    onclick: (e) => deleteWebhook(w, e.currentTarget),
  }, 'Delete');
  const events = w.events?.length === EVENTS.length
    ? 'all job events'
    : EVENTS.filter((ev) => w.events?.includes(ev)).join(', ');
  return h('li', { class: 'webhook', 'data-webhook-id': w.id },
    h('div', { class: 'row' }, h('span', { class: 'url' }, w.url), h('div', { class: 'row gap' }, toggle, remove)),
    h('span', { class: 'hint' }, [events, w.description, `added ${fmt.day(w.created_at)}`].filter(Boolean).join(' · ')),
    log);
}

async function toggleDeliveries(w, button, log) {
  const open = button.getAttribute('aria-expanded') === 'true';
  if (open) {
    button.setAttribute('aria-expanded', 'false');
    log.hidden = true;
    return;
  }
  const { items } = await getJSON(`/v1/webhooks/${encodeURIComponent(w.id)}/deliveries?limit=20`);
  log.replaceChildren(items.length
    ? h('table', { class: 'keys' },
      h('caption', { class: 'sr-only' }, `Recent deliveries to ${w.url}`),
      h('thead', {}, h('tr', {}, ...['When', 'Event', 'Job', 'Attempt', 'Answer', 'Outcome']
        .map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, ...items.map((d) => h('tr', { 'data-outcome': d.outcome },
        h('td', { 'data-label': 'When' }, fmt.when(d.at)),
        h('td', { 'data-label': 'Event' }, d.event_type),
        h('td', { 'data-label': 'Job' }, d.job_id),
        h('td', { 'data-label': 'Attempt' }, String(d.attempt)),
        h('td', { 'data-label': 'Answer' }, d.status_code != null ? `HTTP ${d.status_code}` : (d.error || 'no answer')),
        h('td', { 'data-label': 'Outcome' }, d.outcome)))))
    : h('p', { class: 'hint' }, 'No deliveries yet.'));
  log.hidden = false;
  button.setAttribute('aria-expanded', 'true');
}

async function deleteWebhook(w, button) {
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Delete the endpoint ${w.url}? Deliveries it is still owed are dropped.`)) return;
  await busy(button, async () => {
    await request('DELETE', `/v1/webhooks/${encodeURIComponent(w.id)}`);
    announce(`Endpoint ${w.url} deleted`);
    await loadWebhooks();
    $('webhook-url').focus();
  });
}

export function wireWebhooks() {
  $('webhook-events').replaceChildren(
    h('legend', {}, 'Events'),
    ...EVENTS.map((ev) => h('label', {},
      h('input', { type: 'checkbox', name: 'webhook-event', value: ev, checked: true }), ` ${ev.slice(4)}`)),
  );
  $('webhook-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy(e.submitter, async () => {
      const events = [...document.querySelectorAll('input[name="webhook-event"]:checked')].map((c) => c.value);
      if (!events.length) {
        $('webhook-events').querySelector('input').focus();
        throw new Error('Tick at least one event.');
      }
      const body = { url: $('webhook-url').value.trim(), events };
      const description = $('webhook-description').value.trim();
      if (description) body.description = description;
      const w = await sendJSON('POST', '/v1/webhooks', body);
      $('webhook-form').reset();
      showSecret('new-webhook', 'new-webhook-secret', w.secret);
      announce(`Endpoint ${w.url} added. Copy its signing secret now; it is not shown again.`);
      await loadWebhooks();
    });
  });
  $('new-webhook-copy').addEventListener('click', () => copySecret($('new-webhook-secret'), 'Secret'));
  $('webhooks-refresh').addEventListener('click', (e) => busy(e.currentTarget, loadWebhooks));
}

/** Forgets the endpoints and the secret shown, for the session that ended. */
export function resetWebhooks() {
  $('webhook-list').replaceChildren();
  $('new-webhook').hidden = true;
  $('new-webhook-secret').value = '';
  $('webhooks').hidden = true;
}
