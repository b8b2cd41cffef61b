// Murmur's dashboard. Plain ES modules, no build step: the server embeds
// these files and serves them under a strict CSP (no inline script or style).
//
// This module signs in and out and starts the sections, each its own
// module: new job (jobform.js: upload, URL, parameters, callback), the live
// job list (jobs.js), one job's view (jobview.js), plan, usage and API keys
// (account.js), webhooks (webhooks.js). They share state.js; ui.js builds
// the DOM. Everything comes from the public API (api.js, live.js).

import {
  ApiError, clearToken, getJSON, getToken, sendJSON, setToken, setUnauthorizedHandler,
} from './api.js';
import { LiveFeed } from './live.js';
import { loadFiles } from './files.js';
import {
  applyLimits, loadModels, loadWorkflows, resetJobForm, wireJobForm,
} from './jobform.js';
import {
  applyEvent, loadJobs, renderJobs, resetJobs, wireJobs,
} from './jobs.js';
import { resetJobView, wireJobView } from './jobview.js';
import {
  loadKeys, loadPlan, resetAccount, wireAccount,
} from './account.js';
import { loadWebhooks, resetWebhooks, wireWebhooks } from './webhooks.js';
import { state } from './state.js';
import {
  $, busy, showError, toast,
} from './ui.js';

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

// Counts sign-ins and sign-outs: work begun for one session stops when it
// is over (a sign-out while the page is still loading, say).
let session = 0;

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
  resetJobs();
  $('toasts').replaceChildren();
  resetAccount();
  resetWebhooks();
  resetJobForm();
  resetJobView();
  showAuth(message);
}

/** After a reconnect (or on Refresh): everything that may have changed. */
async function catchUp() {
  await Promise.all([loadJobs(), loadFiles(), loadWorkflows().then(loadPlan)]);
}

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
    loadWebhooks(),
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

wireAuth();
wireJobForm();
wireJobs(catchUp);
wireJobView();
wireAccount();
wireWebhooks();
if (getToken()) enterApp();
else showAuth();
