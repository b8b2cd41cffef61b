// Murmur's dashboard. Plain ES modules, no build step: the server embeds
// these files and serves them under a strict CSP (no inline script or style).
//
// This module signs in and out and starts the sections, each its own
// module: new job (jobform.js: upload, URL, parameters, callback), the live
// job list (jobs.js), one job's view (jobview.js), plan, usage and API keys
// (account.js), webhooks (webhooks.js). They share state.js; ui.js builds
// the DOM. Everything comes from the public API (api.js, live.js).
//
// Signed in with the server's operator token instead (the "Operator" tab,
// offered on loopback only), the page shows the operator's Workers view
// (ops.js) and none of the tenant sections; a user's session never shows
// it nor asks for it.

import {
  ApiError, clearToken, getJSON, getToken, isOperatorToken, sendJSON, setToken,
  setUnauthorizedHandler,
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
import {
  checkOperatorToken, onLoopback, resetWorkers, startWorkers, wireWorkers,
} from './ops.js';
import { state } from './state.js';
import {
  $, busy, showError, toast,
} from './ui.js';

function showAuth(message) {
  $('app').hidden = true;
  $('ops').hidden = true;
  $('who').hidden = true;
  $('auth').hidden = false;
  if (message) toast(message, 'info');
  // The first field of the tab shown (the operator's, after its sign-out).
  Object.values(AUTH_TABS).map($).find((f) => !f.hidden)?.querySelector('input')?.focus();
}

// The sign-in tabs and their forms; "operator" only on loopback.
const AUTH_TABS = { login: 'login-form', signup: 'signup-form', operator: 'operator-form' };

function authTabs() {
  return Object.keys(AUTH_TABS).filter((t) => !$(`tab-${t}`).hidden);
}

function selectAuthTab(which) {
  for (const [tab, form] of Object.entries(AUTH_TABS)) {
    const on = tab === which;
    $(`tab-${tab}`).setAttribute('aria-selected', String(on));
    $(`tab-${tab}`).tabIndex = on ? 0 : -1;
    $(form).hidden = !on;
  }
}

function wireAuth() {
  $('tab-operator').hidden = !onLoopback();
  for (const name of Object.keys(AUTH_TABS)) {
    const tab = $(`tab-${name}`);
    tab.addEventListener('click', () => selectAuthTab(name));
    tab.addEventListener('keydown', (e) => {
      if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
      const tabs = authTabs();
      const step = e.key === 'ArrowRight' ? 1 : -1;
      const next = tabs[(tabs.indexOf(name) + step + tabs.length) % tabs.length];
      selectAuthTab(next);
      $(`tab-${next}`).focus();
    });
  }
  $('operator-form').addEventListener('submit', (e) => {
    e.preventDefault();
    busy(e.submitter, async () => {
      const token = $('operator-token').value.trim();
      try {
        await checkOperatorToken(token);
      } catch (err) {
        // The server answers any other token, and any caller off loopback,
        // as if there were no such route.
        if (err instanceof ApiError && err.status === 404) {
          throw new Error('That is not this server’s operator token (or the page is not reached over loopback).');
        }
        throw err;
      }
      setToken(token, { operator: true });
      $('operator-token').value = '';
      enterOperator();
    });
  });
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
  resetWorkers();
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

/** The operator's page: the workers, nothing of any tenant. */
function enterOperator() {
  session += 1;
  $('toasts').replaceChildren();
  $('auth').hidden = true;
  $('app').hidden = true;
  $('who').hidden = false;
  $('who-tenant').textContent = 'Operator';
  $('who-tier').textContent = 'this server';
  showConnection('stopped');
  startWorkers({
    refused: () => signOut('The server no longer accepts this operator token (it restarts with a new one): read operator.json again.'),
  });
  $('main').focus();
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
wireWorkers();
if (isOperatorToken()) enterOperator();
else if (getToken()) enterApp();
else showAuth();
