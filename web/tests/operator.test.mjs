// The operator's Workers view in a real browser against the real server:
// Debian's Chromium driven by playwright-core, the murmur binary started by
// the shared harness (MURMUR_BIN picks it; MURMUR_WEB_DIR serves web/ from
// disk) with two local inference workers, a real recording and a real
// model. Nothing is mocked; the one simulation is a hidden tab (the page is
// told `document.hidden`, as a browser would tell it).
//
// The operator signs in with the token the server writes to operator.json
// in its data dir, as `murmur admin` reads it. A tenant, signed into the
// dashboard beside it, must see none of it and its page must never ask
// for /v1/ops/*. The tests run in order and share one server and browser.
// Screenshots go to artifacts/dashboard/ at the repository root.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { CHROMIUM_ARGS, assertFitsWidth, axeViolations } from './browser.mjs';
import {
  installModels, setTier, signup, startMurmur, testAudio,
} from '../../tests/js/murmur.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const artifacts = join(repo, 'artifacts', 'dashboard');
const PHONE = { width: 390, height: 844 };
const WORKERS = 2;
// The page's refresh period is 3 s: waiting this long without a request
// means it is not polling.
const QUIET_MS = 7_000;

/**
 * Records what a page asks of the server and what it complains about:
 * every request's path, the answers to /v1/ops/*, console errors, uncaught
 * errors and CSP violations.
 */
function watch(page) {
  const w = {
    requests: [], ops: [], console: [], errors: [], csp: [],
  };
  page.on('request', (r) => w.requests.push(new URL(r.url()).pathname));
  page.on('response', (r) => {
    if (new URL(r.url()).pathname.startsWith('/v1/ops/')) w.ops.push(r.status());
  });
  page.on('pageerror', (e) => w.errors.push(String(e)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') w.console.push(msg.text());
    if (/Content Security Policy/i.test(msg.text())) w.csp.push(msg.text());
  });
  return w;
}

/**
 * The JFK recording `times` over as one 16-bit PCM WAV (the cached file is
 * 16 kHz mono 16-bit, 11 s), so a job keeps a worker busy long enough to be
 * seen. Answers its path.
 */
function jfkRepeated(src, times, dir) {
  const wav = readFileSync(src);
  let at = 12;
  let fmt = null;
  let pcm = null;
  while (at + 8 <= wav.length) {
    const id = wav.toString('ascii', at, at + 4);
    const size = wav.readUInt32LE(at + 4);
    if (id === 'fmt ') fmt = wav.subarray(at + 8, at + 8 + size);
    if (id === 'data') pcm = wav.subarray(at + 8, at + 8 + size);
    at += 8 + size + (size % 2);
  }
  assert.ok(fmt && pcm, 'the JFK recording is a plain WAV');
  assert.equal(fmt.readUInt16LE(0), 1, 'PCM');
  const data = Buffer.concat(Array(times).fill(pcm));
  const head = Buffer.alloc(12 + 8 + fmt.length + 8);
  head.write('RIFF', 0, 'ascii');
  head.writeUInt32LE(head.length - 8 + data.length, 4);
  head.write('WAVE', 8, 'ascii');
  head.write('fmt ', 12, 'ascii');
  head.writeUInt32LE(fmt.length, 16);
  fmt.copy(head, 20);
  head.write('data', 20 + fmt.length, 'ascii');
  head.writeUInt32LE(data.length, 24 + fmt.length);
  const path = join(dir, `jfk-x${times}.wav`);
  writeFileSync(path, Buffer.concat([head, data]));
  return path;
}

/** A tenant's HTTP client on the API (bearer token). */
function client(base, token) {
  return async (method, path, body) => {
    const headers = { authorization: `Bearer ${token}` };
    let payload = body;
    if (body && !(body instanceof FormData)) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const res = await fetch(`${base}${path}`, { method, headers, body: payload });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  };
}

/** The Workers table's rows as the page shows them, cell text by column. */
function shownWorkers(page) {
  return page.locator('#worker-list tr').evaluateAll((trs) => trs.map((tr) => {
    const row = { index: tr.querySelector('th').textContent, state: tr.dataset.state };
    for (const td of tr.querySelectorAll('td')) row[td.dataset.col] = td.textContent;
    return row;
  }));
}

async function signInAsOperator(page, base, token) {
  await page.goto(base);
  await page.getByRole('tab', { name: 'Operator' }).click();
  await page.getByLabel('Operator token').fill(token);
  await page.getByRole('button', { name: 'Sign in as operator' }).click();
  await page.getByRole('heading', { name: 'Workers' }).waitFor();
}

describe('operator view of the workers', { timeout: 300_000 }, () => {
  let server;
  let browser;
  let tmp;
  let operatorToken;
  let long;
  let tenant;
  let api;
  let ctxOp;
  let pageOp;
  let watchOp;

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    installModels(['tiny.en', 'silero-vad']);
    tmp = mkdtempSync(join(tmpdir(), 'murmur-operator-'));
    // 88 s of speech, 2.8 MB: more than the basic test tier's 2 MB file
    // limit, so the tenant is moved to premium below.
    long = jfkRepeated(testAudio('jfk'), 8, tmp);
    const env = { MURMUR__MODELS__WORKERS: String(WORKERS) };
    if (process.env.MURMUR_WEB_DIR) env.MURMUR__SERVER__WEB_DIR = resolve(process.env.MURMUR_WEB_DIR);
    server = await startMurmur({ env });
    operatorToken = JSON.parse(readFileSync(join(server.dataDir, 'operator.json'), 'utf8')).token;
    assert.match(operatorToken, /^[0-9a-f]{64}$/);
    tenant = await signup(server.base, 'ops-tenant');
    setTier(server, tenant.tenant.id, 'premium');
    api = client(server.base, tenant.token);
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
      args: CHROMIUM_ARGS,
    });
    ctxOp = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    pageOp = await ctxOp.newPage();
    watchOp = watch(pageOp);
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('signs the operator in with the token from operator.json and lists every worker', async () => {
    // By keyboard alone: the arrow keys move along the sign-in tabs.
    await pageOp.goto(server.base);
    await pageOp.locator('#tab-login').focus();
    await pageOp.keyboard.press('ArrowLeft'); // wraps round to the last tab
    assert.equal(await pageOp.evaluate(() => document.activeElement.id), 'tab-operator');
    assert.equal(await pageOp.locator('#tab-operator').getAttribute('aria-selected'), 'true');
    await pageOp.keyboard.press('Tab');
    assert.equal(await pageOp.evaluate(() => document.activeElement.id), 'operator-token');
    await pageOp.keyboard.type(operatorToken);
    await pageOp.keyboard.press('Enter');
    await pageOp.getByRole('heading', { name: 'Workers' }).waitFor();
    await pageOp.locator('#worker-list tr').nth(WORKERS - 1).waitFor();
    const rows = await shownWorkers(pageOp);
    assert.equal(rows.length, WORKERS, JSON.stringify(rows));
    assert.deepEqual(rows.map((r) => r.index), ['0', '1']);
    for (const r of rows) {
      assert.equal(r.node, 'local');
      assert.equal(r.device, 'cpu');
      assert.equal(r.state, 'idle');
      assert.equal(r.job, '–');
      assert.equal(r.jobs, '0');
    }
    // The server's own answer, beside what the page shows.
    const res = await fetch(`${server.base}/v1/ops/workers`, { headers: { authorization: `Bearer ${operatorToken}` } });
    assert.equal(res.status, 200);
    const answer = await res.json();
    assert.equal(answer.workers.length, WORKERS);
    // compute_type and models are shown once the server reports them (a
    // newer server), "–" before.
    for (const w of answer.workers) {
      const r = rows.find((x) => x.index === String(w.index));
      assert.equal(r.compute, w.compute_type ?? '–');
      assert.equal(r.models, Array.isArray(w.models) ? (w.models.join(', ') || 'none') : '–');
    }
    assert.match(await pageOp.locator('#workers-summary').textContent(), /^2 workers: 0 busy, 2 idle/);
    // None of a tenant's sections, and nothing asked of the tenant API.
    assert.equal(await pageOp.locator('#app').isHidden(), true);
    assert.equal(watchOp.requests.some((p) => p === '/v1/me' || p.startsWith('/v1/jobs')), false);
    assert.equal(await pageOp.locator('#who-tenant').textContent(), 'Operator');
  });

  it('shows a worker busy with a real job, its tenant, id and stage, then idle with one more job done', async (t) => {
    const form = new FormData();
    form.append('file', new Blob([readFileSync(long)], { type: 'audio/wav' }), 'jfk-long.wav');
    const file = await api('POST', '/v1/files', form);
    assert.equal(file.status, 201, JSON.stringify(file.body));
    const job = await api('POST', '/v1/jobs', { file_id: file.body.id, params: { model: 'tiny.en' } });
    assert.equal(job.status, 202, JSON.stringify(job.body));
    const jobId = job.body.id;
    const started = Date.now();

    // The page refreshes by itself: no reload, no click.
    const busyRow = pageOp.locator(`#worker-list tr[data-state="busy"][data-job-id="${jobId}"]`);
    await busyRow.waitFor({ timeout: 60_000 });
    await busyRow.locator('td[data-col="stage"]', { hasText: 'transcribe' }).waitFor({ timeout: 60_000 });
    const row = (await shownWorkers(pageOp)).find((r) => r.job === jobId);
    t.diagnostic(`busy after ${Date.now() - started} ms: ${JSON.stringify(row)}`);
    assert.equal(row.state, 'busy');
    assert.equal(row.tenant, tenant.tenant.id);
    assert.match(row.elapsed, /^\d+:\d\d$/);
    assert.equal(row.jobs, '0');
    assert.match(await pageOp.locator('#workers-summary').textContent(), /^2 workers: 1 busy, 1 idle/);
    // The server says the same of the job.
    const running = await api('GET', `/v1/jobs/${jobId}`);
    assert.ok(['running', 'completed'].includes(running.body.status), JSON.stringify(running.body));

    // Let the tests of the view itself look at it with a job running.
    await pageOp.screenshot({ path: join(artifacts, 'operator.png'), fullPage: true });
    assert.deepEqual(await axeViolations(pageOp), [], 'light scheme, a worker busy');
    await pageOp.emulateMedia({ colorScheme: 'dark' });
    try {
      assert.deepEqual(await axeViolations(pageOp), [], 'dark scheme, a worker busy');
    } finally {
      await pageOp.emulateMedia({ colorScheme: 'light' });
    }

    // Back to idle, and the count went up by one.
    const index = row.index;
    const done = pageOp.locator(`#worker-list tr[data-worker-index="${index}"][data-state="idle"] td[data-col="jobs"]`, { hasText: /^1$/ });
    await done.waitFor({ timeout: 180_000 });
    const after = (await shownWorkers(pageOp)).find((r) => r.index === index);
    t.diagnostic(`idle after ${Date.now() - started} ms: ${JSON.stringify(after)}`);
    assert.equal(after.job, '–');
    assert.notEqual(after.audio, '0:00', 'audio seconds counted');
    const finished = await api('GET', `/v1/jobs/${jobId}`);
    assert.equal(finished.body.status, 'completed');
    // The other worker did nothing.
    const other = (await shownWorkers(pageOp)).find((r) => r.index !== index);
    assert.equal(other.jobs, '0');
    assert.equal(await pageOp.locator('#waiting-list dd[data-tier="premium"]').textContent(), '0');
  });

  it('shows a tenant signed into the dashboard nothing of it, and never asks for it', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const page = await ctx.newPage();
      const w = watch(page);
      await page.goto(server.base);
      await page.locator('#login-email').fill(tenant.email);
      await page.locator('#login-password').fill(tenant.password);
      await page.getByRole('button', { name: 'Sign in', exact: true }).click();
      await page.locator('#conn[data-state="live"]').waitFor({ timeout: 15_000 });
      // Its own job is there: the page is fully signed in.
      await page.locator('#job-list li.job').first().waitFor();
      await page.waitForTimeout(QUIET_MS);
      assert.equal(await page.locator('#ops').isHidden(), true);
      assert.equal(await page.getByRole('heading', { name: 'Workers' }).count(), 0);
      assert.equal(await page.getByRole('table', { name: /workers/i }).count(), 0);
      assert.deepEqual(w.requests.filter((p) => p.startsWith('/v1/ops/')), []);
      assert.deepEqual(w.console, [], 'console errors');
      assert.deepEqual(w.errors, [], 'page errors');
      assert.equal(await page.evaluate(() => sessionStorage.getItem('murmur.operator')), null);

      // A tenant's token offered as the operator's is refused by the server
      // (404, as if there were no such route), and nothing is shown or kept.
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByRole('tab', { name: 'Operator' }).click();
      await page.getByLabel('Operator token').fill(tenant.token);
      await page.getByRole('button', { name: 'Sign in as operator' }).click();
      await page.locator('.toast', { hasText: 'not this server’s operator token' }).waitFor();
      assert.deepEqual(w.ops, [404]);
      assert.equal(await page.locator('#ops').isHidden(), true);
      assert.equal(await page.evaluate(() => sessionStorage.getItem('murmur.token')), null);
    } finally {
      await ctx.close();
    }
  });

  it('signs out a page whose token the server does not take as the operator’s', async () => {
    // As after a restart (a new operator token), or a tenant setting the
    // page's operator flag by hand beside its own token: the server's 404
    // ends the session, with nothing of the view shown.
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const page = await ctx.newPage();
      const w = watch(page);
      await page.goto(server.base);
      await page.evaluate((token) => {
        sessionStorage.setItem('murmur.token', token);
        sessionStorage.setItem('murmur.operator', '1');
      }, tenant.token);
      await page.reload();
      await page.locator('.toast', { hasText: 'no longer accepts this operator token' }).waitFor();
      await page.getByRole('heading', { name: 'Sign in to Murmur' }).waitFor();
      assert.deepEqual(w.ops, [404]);
      assert.equal(await page.locator('#ops').isHidden(), true);
      assert.equal(await page.locator('#worker-list tr').count(), 0);
      assert.equal(await page.evaluate(() => sessionStorage.getItem('murmur.token')), null);
      assert.deepEqual(w.errors, []);
    } finally {
      await ctx.close();
    }
  });

  it('fits a phone screen without horizontal scrolling, a job running', async () => {
    const ctx = await browser.newContext({
      viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    });
    try {
      const page = await ctx.newPage();
      await signInAsOperator(page, server.base, operatorToken);
      await page.locator('#worker-list tr').nth(WORKERS - 1).waitFor();
      // The widest things the view shows are a running job's ids.
      const files = await api('GET', '/v1/files');
      const job = await api('POST', '/v1/jobs', { file_id: files.body.items[0].id, params: { model: 'tiny.en' } });
      assert.equal(job.status, 202, JSON.stringify(job.body));
      await page.locator(`#worker-list tr[data-state="busy"][data-job-id="${job.body.id}"]`).waitFor({ timeout: 60_000 });
      await assertFitsWidth(page, PHONE.width);
      // Each worker is a card of labelled lines, inside the screen.
      const box = await page.locator('#worker-list tr').first().boundingBox();
      assert.ok(box.x >= 0 && box.x + box.width <= PHONE.width, JSON.stringify(box));
      await page.screenshot({ path: join(artifacts, 'operator-phone.png'), fullPage: true });
      assert.deepEqual(await axeViolations(page), [], 'on the phone');
    } finally {
      await ctx.close();
    }
  });

  it('stays signed in as the operator across a reload, then stops asking while hidden and once signed out', async () => {
    const count = () => watchOp.requests.filter((p) => p === '/v1/ops/workers').length;
    await pageOp.reload();
    await pageOp.locator('#worker-list tr').nth(WORKERS - 1).waitFor();
    assert.equal(await pageOp.locator('#app').isHidden(), true);
    // Polling now.
    const before = count();
    await pageOp.waitForTimeout(QUIET_MS);
    assert.ok(count() >= before + 2, `polled ${count() - before} times in ${QUIET_MS} ms`);
    // Hidden: as a browser tells a page its tab went to the background.
    await pageOp.evaluate(() => {
      Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
      document.dispatchEvent(new Event('visibilitychange'));
    });
    const hidden = count();
    await pageOp.waitForTimeout(QUIET_MS);
    assert.equal(count(), hidden, 'asked while hidden');
    // Shown again: it catches up at once, then keeps going.
    await pageOp.evaluate(() => {
      delete document.hidden;
      document.dispatchEvent(new Event('visibilitychange'));
    });
    await pageOp.waitForFunction(() => !document.hidden);
    await pageOp.waitForTimeout(1_000);
    assert.ok(count() > hidden, 'did not catch up when shown');
    // Signed out: the view and the token are gone, and so are the requests.
    await pageOp.getByRole('button', { name: 'Sign out' }).click();
    await pageOp.getByRole('heading', { name: 'Sign in to Murmur' }).waitFor();
    const out = count();
    assert.equal(await pageOp.locator('#ops').isHidden(), true);
    assert.equal(await pageOp.locator('#worker-list tr').count(), 0);
    assert.equal(await pageOp.evaluate(() => sessionStorage.getItem('murmur.token')), null);
    await pageOp.waitForTimeout(QUIET_MS);
    assert.equal(count(), out, 'asked after signing out');
  });

  it('raised no console errors, page errors or CSP violations on the operator’s page', () => {
    assert.deepEqual(watchOp.errors, []);
    assert.deepEqual(watchOp.csp, []);
    assert.deepEqual(watchOp.console, []);
    assert.ok(watchOp.ops.length > 0 && watchOp.ops.every((s) => s === 200), `answers: ${watchOp.ops}`);
  });
});
