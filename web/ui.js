// DOM helpers and the page's messages: element building, toasts, screen
// reader announcements, busy buttons and progress bars. No state, no API.

import { ApiError, describeError, getToken } from './api.js';

export const $ = (id) => document.getElementById(id);

/** Builds an element: h('li', {class: 'x', onclick: fn}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
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

export function toast(message, kind = 'error') {
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

export function showError(err) {
  if (err instanceof ApiError && err.status === 401 && getToken()) return; // signs out
  toast(describeError(err));
}

export function announce(text) {
  // Clear first so repeating the same words is read again.
  const a = $('announcer');
  a.textContent = '';
  setTimeout(() => {
    a.textContent = text;
  }, 50);
}

/** Runs an async action with its button busy; problems are shown. */
export async function busy(button, fn) {
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

export function setBar(bar, pct, text) {
  bar.setAttribute('aria-valuenow', String(pct));
  if (text) bar.setAttribute('aria-valuetext', text);
  bar.firstElementChild.style.width = `${pct}%`;
}

/**
 * Shows a secret the server gives only once in its box; with `focus`, it is
 * selected, ready to copy.
 */
export function showSecret(boxId, inputId, value, { focus = true } = {}) {
  $(inputId).value = value;
  $(boxId).hidden = false;
  if (focus) {
    $(inputId).focus();
    $(inputId).select();
  }
}

/** Copies a secret shown once; when the browser refuses, selects it. */
export async function copySecret(input, what) {
  try {
    await navigator.clipboard.writeText(input.value);
    toast(`${what} copied to the clipboard.`, 'info');
  } catch {
    input.focus();
    input.select();
    toast(`Copying was refused by the browser; the ${what.toLowerCase()} is selected, press Ctrl+C (⌘C).`, 'info');
  }
}
