// The dashboard in a real browser against the real server: Debian's
// Chromium driven by playwright-core, the murmur binary started by the
// shared harness (MURMUR_BIN picks it; MURMUR_WEB_DIR serves web/ from disk
// instead of the copy embedded in the binary), a real recording and a real
// model. Nothing is mocked except, in the reconnect test, the page's
// WebSocket being held shut for a while (Playwright's routeWebSocket proxies
// it to the real server the rest of the time).
//
// The tests share one server, one browser and the first tenant's page, and
// run in order: each builds on what the previous one left (the job, the
// file). Screenshots go to artifacts/dashboard/ at the repository root.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { installModels, startMurmur, testAudio } from '../../tests/js/murmur.mjs';
import { CHROMIUM_ARGS, assertFitsWidth, axeViolations } from './browser.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const artifacts = join(repo, 'artifacts', 'dashboard');
const PHRASE = 'ask not what your country can do for you';
const PHONE = { width: 390, height: 844 };

/**
 * Whether some run of words in `text` is within `maxEdits` word edits
 * (substitutions, insertions, deletions) of `phrase`. A recording from the
 * browser's microphone passes through WebRTC's audio processing and Opus,
 * so tiny.en may hear one word differently ("asked not"); more than that
 * is a real failure.
 */
function nearlyContains(text, phrase, maxEdits) {
  const words = text.toLowerCase().match(/[a-z']+/g) ?? [];
  const want = phrase.toLowerCase().match(/[a-z']+/g) ?? [];
  // Edit distance of `want` against any substring of `words`: the first row
  // is all zeros, so a match may start anywhere; the answer is the row's
  // minimum at the end, so it may end anywhere.
  let prev = new Array(words.length + 1).fill(0);
  for (let i = 1; i <= want.length; i += 1) {
    const row = [i];
    for (let j = 1; j <= words.length; j += 1) {
      const same = want[i - 1] === words[j - 1] ? 0 : 1;
      row[j] = Math.min(prev[j - 1] + same, prev[j] + 1, row[j - 1] + 1);
    }
    prev = row;
  }
  return Math.min(...prev) <= maxEdits;
}

/** Watches a page for reloads, uncaught errors and CSP violations. */
function watch(page) {
  const w = { loads: 0, errors: [], csp: [] };
  page.on('load', () => {
    w.loads += 1;
  });
  page.on('pageerror', (e) => w.errors.push(String(e)));
  page.on('console', (msg) => {
    if (/Content Security Policy/i.test(msg.text())) w.csp.push(msg.text());
  });
  return w;
}

async function signUpThroughPage(page, base, who) {
  await page.goto(base);
  await page.getByRole('tab', { name: 'Create an account' }).click();
  await page.getByLabel('Organisation name').fill(who.tenant);
  await page.locator('#signup-email').fill(who.email);
  await page.locator('#signup-password').fill(who.password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('#who-tenant').filter({ hasText: who.tenant }).waitFor();
  // The live feed subscribed to the tenant's topic.
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 15_000 });
}

/** Clicks "Start job" and answers the id of the job that appears in the list. */
async function startJob(page) {
  const before = new Set(await page.locator('#job-list li.job').evaluateAll(
    (lis) => lis.map((li) => li.dataset.jobId),
  ));
  await page.getByRole('button', { name: 'Start job' }).click();
  const handle = await page.waitForFunction((known) => {
    const li = [...document.querySelectorAll('#job-list li.job')].find((l) => !known.includes(l.dataset.jobId));
    return li && li.dataset.jobId;
  }, [...before]);
  return handle.jsonValue();
}

/**
 * Whether `headers` carry a valid Standard Webhooks signature of `body` for
 * `secret` ("whsec_" + base64 key): our own check, not Murmur's code.
 */
function signedBy(secret, headers, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = createHmac('sha256', key)
    .update(`${headers['webhook-id']}.${headers['webhook-timestamp']}.`)
    .update(body)
    .digest();
  return (headers['webhook-signature'] || '').split(' ').some((part) => {
    const [version, sig] = part.split(',');
    const got = Buffer.from(sig || '', 'base64');
    return version === 'v1' && got.length === expected.length && timingSafeEqual(got, expected);
  });
}

/**
 * A stand-in for the outside world on a loopback port: serves a recording
 * at /audio/talk.wav and records every other request (webhook deliveries).
 */
async function startReceiver(audio) {
  const received = [];
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/audio/talk.wav') {
      res.writeHead(200, { 'content-type': 'audio/wav' });
      res.end(readFileSync(audio));
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, received, base: `http://127.0.0.1:${server.address().port}` };
}

function account(name) {
  const n = `${name}-${process.pid}-${Date.now()}`;
  return { tenant: `Dashboard ${n}`, email: `${n}@example.test`, password: 'correct horse battery staple' };
}

describe('dashboard', { timeout: 240_000 }, () => {
  let server;
  let browser;
  let ctxA;
  let pageA;
  let watchA;
  let ctxB;
  let pageB;
  let jfk;
  let jobId;
  let receiver;
  let webhookId;
  const alice = account('alice');
  const bob = account('bob');
  // The reconnect test's control over pageA's WebSocket.
  const sockets = [];
  const held = [];
  let holdSocket = false;

  before(async () => {
    mkdirSync(artifacts, { recursive: true });
    installModels(['tiny.en', 'silero-vad']);
    jfk = testAudio('jfk');
    receiver = await startReceiver(jfk);
    // The receiver is on loopback, which the SSRF guard refuses unless the
    // operator allows the host.
    const env = { MURMUR__OUTBOUND__ALLOWED_HOSTS: '127.0.0.1' };
    if (process.env.MURMUR_WEB_DIR) env.MURMUR__SERVER__WEB_DIR = resolve(process.env.MURMUR_WEB_DIR);
    server = await startMurmur({ env });
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
      // The microphone is Chromium's fake capture device playing the JFK
      // recording (in a loop, from when capture starts).
      args: [
        ...CHROMIUM_ARGS,
        '--use-fake-ui-for-media-stream',
        '--use-fake-device-for-media-stream',
        `--use-file-for-fake-audio-capture=${jfk}`,
      ],
    });
    ctxA = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await ctxA.grantPermissions(['microphone']);
    pageA = await ctxA.newPage();
    watchA = watch(pageA);
    await pageA.routeWebSocket(/\/v1\/ws/, (ws) => {
      if (holdSocket) {
        // "Server unreachable": the socket opens but nothing answers.
        held.push(ws);
        return;
      }
      ws.connectToServer();
      sockets.push(ws);
    });
    ctxB = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    pageB = await ctxB.newPage();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    receiver?.server.close();
  });

  it('serves the page under its CSP and signs two tenants up through it', async () => {
    const res = await fetch(`${server.base}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-security-policy'), /script-src 'self'/);
    await signUpThroughPage(pageA, server.base, alice);
    await signUpThroughPage(pageB, server.base, bob);
    assert.equal(await pageA.locator('#jobs-empty').isVisible(), true);
  });

  it('uploads the JFK recording and follows the job live to 100% without reloading', async (t) => {
    const loadsBefore = watchA.loads;
    await pageA.evaluate(() => {
      window.notReloaded = true;
    });
    await pageA.locator('#file-input').setInputFiles(jfk);
    // The visible line, not the screen-reader announcer that repeats it
    // 50 ms later (both match the text once the announcement lands).
    await pageA.locator('#upload-name', { hasText: 'Uploaded jfk.wav' }).waitFor();
    assert.notEqual(await pageA.locator('#file-select').inputValue(), '');
    // tiny.en is allowed on basic (the tiny family); small is not in the
    // plan and is offered disabled.
    await pageA.getByLabel('Model').selectOption('tiny.en');
    assert.equal(await pageA.locator('#model option[value="small"]').isDisabled(), true);
    // Record every value the list's progress bars take.
    await pageA.evaluate(() => {
      window.seenProgress = [];
      new MutationObserver((records) => {
        for (const r of records) window.seenProgress.push(Number(r.target.getAttribute('aria-valuenow')));
      }).observe(document.getElementById('job-list'), {
        subtree: true, attributes: true, attributeFilter: ['aria-valuenow'],
      });
    });
    await pageA.getByRole('button', { name: 'Start job' }).click();

    const item = pageA.locator('#job-list li.job').first();
    await item.waitFor();
    jobId = await item.getAttribute('data-job-id');
    assert.ok(jobId, 'the list item carries the job id');
    const bar = item.getByRole('progressbar');
    await pageA.locator(`li[data-job-id="${jobId}"] [role="progressbar"][aria-valuenow="100"]`)
      .waitFor({ timeout: 90_000 });
    assert.equal(await bar.getAttribute('aria-valuenow'), '100');
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor();
    // Told to screen readers through the polite live region.
    await pageA.locator('#announcer[aria-live="polite"]', { hasText: 'jfk.wav: completed' }).waitFor();
    const seen = await pageA.evaluate(() => window.seenProgress);
    t.diagnostic(`progress values shown: ${seen.join(' ')}`);
    assert.equal(seen.at(-1), 100);
    // Steps on the way, as the events came in (a page that only refetched
    // the list would jump from 0 to 100).
    assert.ok(seen.some((v) => v > 0 && v < 100), `no intermediate progress in ${seen}`);
    // The same document all along: no load event, the marker survives.
    assert.equal(watchA.loads, loadsBefore);
    assert.equal(await pageA.evaluate(() => window.notReloaded), true);
    // The server agrees.
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const job = await (await fetch(`${server.base}/v1/jobs/${jobId}`, {
      headers: { authorization: `Bearer ${token}` },
    })).json();
    assert.equal(job.status, 'completed');
  });

  it('shows the transcript with timestamps that seek the audio player', async () => {
    // Starting the job opened its view.
    const view = pageA.locator('#job-view');
    await view.locator('#transcript li').first().waitFor({ timeout: 15_000 });
    const text = (await view.locator('#transcript').innerText()).replace(/\s+/g, ' ').toLowerCase();
    assert.ok(text.includes(PHRASE), `transcript lacks the phrase: ${text}`);

    const player = pageA.locator('#player');
    await player.waitFor();
    assert.match(await player.getAttribute('src'), /^blob:/);
    await pageA.waitForFunction(() => document.getElementById('player').readyState >= 1);
    const last = view.locator('#transcript li').last();
    const start = Number(await last.getAttribute('data-start'));
    assert.ok(start > 1, `the last segment starts at ${start}`);
    await last.getByRole('button').click();
    const t = await pageA.evaluate(() => document.getElementById('player').currentTime);
    assert.ok(Math.abs(t - start) < 1.5, `player at ${t}, segment at ${start}`);
    await pageA.screenshot({ path: join(artifacts, 'desktop.png'), fullPage: true });
  });

  it('passes axe’s WCAG 2.1 AA checks with a job open, light and dark', async () => {
    assert.deepEqual(await axeViolations(pageA), [], 'light scheme');
    await pageA.emulateMedia({ colorScheme: 'dark' });
    try {
      assert.deepEqual(await axeViolations(pageA), [], 'dark scheme');
      await pageA.screenshot({ path: join(artifacts, 'desktop-dark.png'), fullPage: true });
    } finally {
      await pageA.emulateMedia({ colorScheme: 'light' });
    }
  });

  it('downloads the SRT through an authenticated blob link', async () => {
    const [download] = await Promise.all([
      pageA.waitForEvent('download'),
      pageA.locator('#download-buttons button[data-format="srt"]').click(),
    ]);
    assert.equal(download.suggestedFilename(), 'jfk.srt');
    const srt = readFileSync(await download.path(), 'utf8');
    const blocks = srt.trim().split(/\r?\n\r?\n/);
    assert.ok(blocks.length >= 1);
    for (const block of blocks) {
      const lines = block.split(/\r?\n/);
      assert.match(lines[0], /^\d+$/, `cue number in ${block}`);
      assert.match(lines[1], /^\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}$/, `timestamp line in ${block}`);
      assert.ok(lines.length >= 3, `cue text in ${block}`);
    }
    assert.match(srt.toLowerCase(), /country/);
    // Without word timings only the line width applies.
    await pageA.locator('#subtitle-layout summary').click();
    assert.equal(await pageA.getByLabel('Lines per cue').isDisabled(), true);
    assert.match(await pageA.locator('#sub-hint').innerText(), /Time each word/);
    await pageA.getByLabel('Characters per line').fill('12');
    const [wrapped] = await Promise.all([
      pageA.waitForEvent('download'),
      pageA.locator('#download-buttons button[data-format="srt"]').click(),
    ]);
    const wrappedLines = readFileSync(await wrapped.path(), 'utf8').split(/\r?\n/)
      .filter((l) => l && !/^\d+$/.test(l) && !l.includes(' --> '));
    assert.ok(wrappedLines.length > blocks.length, 'lines were wrapped');
    for (const line of wrappedLines) assert.ok(line.length <= 12 || !line.includes(' '), line);
    await pageA.getByLabel('Characters per line').fill('');
    await pageA.locator('#subtitle-layout summary').click();
    // Every other format is offered too.
    for (const f of ['json', 'vtt', 'txt', 'tsv']) {
      assert.equal(await pageA.locator(`#download-buttons button[data-format="${f}"]`).count(), 1, f);
    }
  });

  it('shows the plan’s limits against current usage', async () => {
    const plan = pageA.locator('#plan-body');
    await plan.getByText('Jobs completed', { exact: false }).waitFor();
    // The upload counts against storage: a meter with a non-zero value.
    const meter = plan.locator('meter').first();
    const value = Number(await meter.getAttribute('value'));
    const max = Number(await meter.getAttribute('max'));
    const size = readFileSync(jfk).length;
    assert.ok(value >= size * 0.9 && value <= max, `storage meter ${value} of ${max}, file ${size}`);
    assert.match(await plan.innerText(), /basic/);
    // Refreshed after the job completed: one job this month.
    await pageA.waitForFunction(() => /Jobs completed in \S+\s+1\b/.test(document.getElementById('plan-body').innerText));
  });

  it('takes a dropped file and shows problems in words', async () => {
    // What a drag from the desktop delivers: a drop event with a file.
    await pageA.evaluate(() => {
      const dt = new DataTransfer();
      dt.items.add(new File(['this is not audio at all\n'.repeat(50)], 'notes.txt', { type: 'text/plain' }));
      const drop = document.getElementById('drop');
      for (const type of ['dragenter', 'dragover', 'drop']) {
        drop.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }
    });
    await pageA.getByText('Upload of notes.txt failed').waitFor();
    // The server's answer (invalid audio or unsupported media), in words.
    const alert = pageA.locator('#toasts .toast').last();
    await alert.waitFor();
    assert.match(await alert.innerText(), /could not be read as audio|not supported/i);
    await alert.getByRole('button', { name: 'Dismiss message' }).click();
    // Over the plan's file size (2 MB in the test tiers): said before uploading.
    await pageA.locator('#file-input').setInputFiles({
      name: 'long.wav', mimeType: 'audio/wav', buffer: Buffer.alloc(2_100_000),
    });
    const big = pageA.locator('#toasts .toast').last();
    await big.filter({ hasText: 'long.wav is 2.1 MB; your plan takes files up to 2.0 MB' }).waitFor();
    await big.getByRole('button', { name: 'Dismiss message' }).click();
  });

  it('creates an API key, shows its token once, lists it and revokes it', async () => {
    // By keyboard: type the name, tick a scope with Space, submit with Enter.
    await pageA.getByLabel('Name', { exact: true }).fill('Flowise test');
    await pageA.locator('input[name="scope"][value="read"]').focus();
    await pageA.keyboard.press('Space');
    assert.equal(await pageA.locator('input[name="scope"][value="read"]').isChecked(), true);
    await pageA.getByLabel('Name', { exact: true }).press('Enter');
    const tokenBox = pageA.getByLabel('New API key');
    await tokenBox.waitFor();
    const token = await tokenBox.inputValue();
    assert.ok(token.length > 20, 'the token is shown');
    const row = pageA.locator('#key-list tr', { hasText: 'Flowise test' });
    await row.waitFor();
    assert.match(await row.innerText(), /read/);
    // The token shown is the real key.
    const me = await fetch(`${server.base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(me.status, 200);

    pageA.once('dialog', (d) => d.accept());
    await row.getByRole('button', { name: 'Revoke key Flowise test' }).click();
    await row.waitFor({ state: 'detached' });
    const after = await fetch(`${server.base}/v1/me`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(after.status, 401, 'the revoked key is refused');
  });

  it('adds a webhook, fetches audio from a URL and runs it with a callback, every delivery signed', async () => {
    const fetchUrl = pageA.getByLabel('Or fetch it from a URL');
    // A cloud metadata address is refused by the server's SSRF guard, in words.
    await fetchUrl.fill('http://169.254.169.254/latest/meta-data/');
    await pageA.getByRole('button', { name: 'Fetch', exact: true }).click();
    const refused = pageA.locator('#toasts .toast').last();
    await refused.waitFor();
    assert.match(await refused.innerText(), /not allowed|link-local|private/i);
    await refused.getByRole('button', { name: 'Dismiss message' }).click();

    // An endpoint for every event but "queued".
    await pageA.getByLabel('Endpoint URL').fill(`${receiver.base}/endpoint`);
    await pageA.locator('input[name="webhook-event"][value="job.queued"]').uncheck();
    await pageA.getByRole('button', { name: 'Add endpoint' }).click();
    const secretBox = pageA.getByLabel('New endpoint’s signing secret');
    await secretBox.waitFor();
    const endpointSecret = await secretBox.inputValue();
    assert.match(endpointSecret, /^whsec_/);
    const row = pageA.locator('#webhook-list li', { hasText: `${receiver.base}/endpoint` });
    await row.waitFor();
    webhookId = await row.getAttribute('data-webhook-id');
    assert.match(await row.innerText(), /job\.started, job\.completed, job\.failed, job\.cancelled/);

    // The server fetches the recording; the form selects it.
    await fetchUrl.fill(`${receiver.base}/audio/talk.wav`);
    await fetchUrl.press('Enter');
    await pageA.locator('#upload-name', { hasText: 'Fetched talk.wav' }).waitFor({ timeout: 30_000 });
    assert.equal(await pageA.locator('#file-select option:checked').innerText().then((t) => t.startsWith('talk.wav')), true);
    await pageA.getByLabel('Model').selectOption('tiny.en');
    await pageA.getByLabel('Callback URL (optional)').fill(`${receiver.base}/callback`);
    const id = await startJob(pageA);
    const callbackSecret = await pageA.getByLabel('Callback signing secret').inputValue();
    assert.match(callbackSecret, /^whsec_/);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor({ timeout: 90_000 });
    const view = pageA.locator('#job-view');
    await view.locator('#transcript li').first().waitFor({ timeout: 15_000 });
    const text = (await view.locator('#transcript').innerText()).replace(/\s+/g, ' ').toLowerCase();
    assert.ok(text.includes(PHRASE), `transcript of the fetched file lacks the phrase: ${text}`);

    // Both receivers hear of the job's end, each signed with its own secret.
    const types = (path) => receiver.received
      .filter((r) => r.path === path)
      .map((r) => JSON.parse(r.body))
      .filter((e) => e.data.job_id === id)
      .map((e) => e.type);
    for (let i = 0; !(types('/endpoint').includes('job.completed') && types('/callback').includes('job.completed')); i += 1) {
      assert.ok(i < 300, `deliveries so far: ${JSON.stringify(receiver.received.map((r) => [r.path, JSON.parse(r.body).type]))}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(!types('/endpoint').includes('job.queued'), 'the endpoint did not ask for job.queued');
    assert.ok(types('/callback').includes('job.queued'), 'a callback hears every event');
    for (const r of receiver.received) {
      const secret = r.path === '/endpoint' ? endpointSecret : callbackSecret;
      assert.ok(signedBy(secret, r.headers, r.body), `signature of a delivery to ${r.path}`);
      assert.ok(!signedBy(r.path === '/endpoint' ? callbackSecret : endpointSecret, r.headers, r.body),
        'a delivery does not verify with the other secret');
    }

    // The endpoint's delivery log, in the page.
    await row.getByRole('button', { name: `Deliveries to ${receiver.base}/endpoint` }).click();
    const delivered = row.locator('tr[data-outcome="delivered"]', { hasText: 'job.completed' });
    await delivered.first().waitFor();
    assert.match(await delivered.first().innerText(), /HTTP 204/);
    assert.deepEqual(await axeViolations(pageA), [], 'with the webhooks and the callback secret shown');
    // Later tests start jobs on the JFK upload, without a callback.
    await pageA.getByLabel('Callback URL (optional)').fill('');
    const jfkOption = await pageA.locator('#file-select option', { hasText: 'jfk.wav' }).getAttribute('value');
    await pageA.locator('#file-select').selectOption(jfkOption);
  });

  it('records the microphone in the browser and transcribes the recording', async () => {
    const jfkOption = await pageA.locator('#file-select option', { hasText: 'jfk.wav' }).getAttribute('value');
    try {
      await recordAndTranscribe();
    } finally {
      // Later tests start jobs on the JFK upload, whatever happened here.
      await pageA.locator('#file-select').selectOption(jfkOption);
    }
  });

  async function recordAndTranscribe() {
    const record = pageA.getByRole('button', { name: 'Record' });
    await record.click();
    await pageA.locator('#record[aria-pressed="true"]').waitFor();
    // The fake microphone plays the 11 s clip; record a little more.
    await pageA.locator('#record-time', { hasText: /Recording 0:1[2-9]/ }).waitFor({ timeout: 30_000 });
    await pageA.getByRole('button', { name: 'Stop recording' }).click();
    const uploaded = pageA.locator('#upload-name', { hasText: /Uploaded recording-\d{8}-\d{6}\.(webm|ogg)/ });
    await uploaded.waitFor({ timeout: 30_000 });
    const name = (await uploaded.innerText()).replace('Uploaded ', '');
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const files = await (await fetch(`${server.base}/v1/files`, {
      headers: { authorization: `Bearer ${token}` },
    })).json();
    const file = files.items.find((f) => f.name === name);
    assert.ok(file, `the recording ${name} is stored`);
    assert.match(file.content_type, /^audio\/(webm|ogg)/);
    assert.ok(file.duration_s > 11 && file.duration_s < 20, `recorded ${file.duration_s} s`);
    assert.equal(await pageA.locator('#file-select').inputValue(), file.id);

    await pageA.getByLabel('Model').selectOption('tiny.en');
    const id = await startJob(pageA);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor({ timeout: 90_000 });
    const view = pageA.locator('#job-view');
    await view.locator('#transcript li').first().waitFor({ timeout: 15_000 });
    const text = (await view.locator('#transcript').innerText()).replace(/\s+/g, ' ').toLowerCase();
    assert.ok(nearlyContains(text, PHRASE, 1), `transcript of the recording is more than a word off the phrase: ${text}`);
  }

  it('reconnects after the socket drops and catches up on what it missed', async () => {
    const loadsBefore = watchA.loads;
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const auth = { authorization: `Bearer ${token}` };
    // Drop the connection and keep the server "unreachable".
    holdSocket = true;
    for (const ws of sockets.splice(0)) await ws.close({ code: 1012, reason: 'test: server restart' });
    await pageA.locator('#conn:not([data-state="live"])').waitFor();

    // Meanwhile a job runs start to end (submitted by a program, say).
    const files = await (await fetch(`${server.base}/v1/files`, { headers: auth })).json();
    const fileId = files.items.find((f) => f.name === 'jfk.wav').id;
    const res = await fetch(`${server.base}/v1/jobs`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ file_id: fileId, params: { job_type: 'vad' } }),
    });
    assert.equal(res.status, 202, await res.clone().text());
    const missed = (await res.json()).id;
    for (let i = 0; ; i += 1) {
      const job = await (await fetch(`${server.base}/v1/jobs/${missed}`, { headers: auth })).json();
      if (job.status === 'completed') break;
      assert.ok(i < 300 && !['failed', 'cancelled'].includes(job.status), JSON.stringify(job));
      await new Promise((r) => setTimeout(r, 200));
    }
    // The page could not have heard of it.
    assert.equal(await pageA.locator(`li[data-job-id="${missed}"]`).count(), 0);

    // The server is back: the page reconnects by itself and catches up.
    holdSocket = false;
    for (const ws of held.splice(0)) await ws.close({ code: 1012 });
    await pageA.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
    const item = pageA.locator(`li[data-job-id="${missed}"]`);
    await item.locator('[role="progressbar"][aria-valuenow="100"]').waitFor({ timeout: 10_000 });
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor();
    assert.equal(watchA.loads, loadsBefore, 'no reload');
    assert.equal(await pageA.evaluate(() => window.notReloaded), true);
  });

  it('times each word when asked and highlights the word being played', async () => {
    await pageA.getByLabel('Model').selectOption('tiny.en');
    await pageA.getByLabel('Time each word').check();
    const id = await startJob(pageA);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor({ timeout: 90_000 });
    const view = pageA.locator('#job-view');
    await view.locator('#transcript .word').first().waitFor({ timeout: 15_000 });
    assert.match(await view.locator('#job-facts').innerText(), /word timings/);
    const words = await view.locator('#transcript .word').evaluateAll((spans) => spans.map((s) => ({
      text: s.textContent, start: Number(s.dataset.start), end: Number(s.dataset.end),
    })));
    assert.ok(words.length >= 20, `${words.length} words`);
    for (let i = 0; i < words.length; i += 1) {
      assert.ok(words[i].start <= words[i].end, JSON.stringify(words[i]));
      if (i) assert.ok(words[i].start >= words[i - 1].start, 'words in order');
    }
    // The sentence's last word ends near the clip's end (11 s).
    const country = words.filter((w) => /country/i.test(w.text)).at(-1);
    assert.ok(country && country.end > 9.5 && country.end <= 11.05, JSON.stringify(country));
    // Playing from a word's time highlights that word.
    await pageA.waitForFunction(() => document.getElementById('player').readyState >= 1);
    await pageA.evaluate((t) => {
      const player = document.getElementById('player');
      player.muted = true;
      player.currentTime = t;
      player.dispatchEvent(new Event('timeupdate'));
    }, (country.start + country.end) / 2);
    assert.match(await view.locator('#transcript .word.now').first().innerText(), /country/i);

    // Subtitle layout from the words: one cue per word, then highlighted words.
    await view.locator('#subtitle-layout summary').click();
    assert.equal(await pageA.getByLabel('Lines per cue').isDisabled(), false);
    await pageA.getByLabel('Words per line').fill('1');
    const [perWord] = await Promise.all([
      pageA.waitForEvent('download'),
      view.locator('#download-buttons button[data-format="srt"]').click(),
    ]);
    const cues = readFileSync(await perWord.path(), 'utf8').trim().split(/\r?\n\r?\n/);
    assert.equal(cues.length, words.length, 'one cue per word');
    cues.forEach((cue, i) => assert.equal(cue.split(/\r?\n/)[2], words[i].text.trim(), cue));
    await pageA.getByLabel('Words per line').fill('');
    await pageA.getByLabel('Highlight each word').check();
    const [highlighted] = await Promise.all([
      pageA.waitForEvent('download'),
      view.locator('#download-buttons button[data-format="vtt"]').click(),
    ]);
    const vtt = readFileSync(await highlighted.path(), 'utf8');
    assert.equal((vtt.match(/<u>/g) || []).length, words.length, 'each word underlined once');
    await pageA.getByLabel('Highlight each word').uncheck();
    await pageA.getByLabel('Time each word').uncheck();
  });

  it('searches a wider beam when asked, as far as the plan allows', async () => {
    const beam = pageA.getByLabel('Beam size');
    // Basic in the test tiers: max_beam_size 5, said on the form and the plan.
    assert.equal(await beam.getAttribute('max'), '5');
    assert.match(await pageA.locator('#beam-hint').innerText(), /up to 5\b/);
    assert.match(await pageA.locator('#plan-body').innerText(), /Widest beam search\s+5\b/);
    await beam.fill('6');
    assert.equal(await beam.evaluate((el) => el.validity.rangeOverflow), true, 'over the plan is invalid');
    await pageA.getByLabel('Model').selectOption('tiny.en');
    await beam.fill('3');
    const id = await startJob(pageA);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor({ timeout: 90_000 });
    const view = pageA.locator('#job-view');
    assert.match(await view.locator('#job-facts').innerText(), /beam 3/);
    await view.locator('#transcript li').first().waitFor({ timeout: 15_000 });
    const text = (await view.locator('#transcript').innerText()).replace(/\s+/g, ' ').toLowerCase();
    assert.ok(text.includes(PHRASE), `beam 3 transcript lacks the phrase: ${text}`);
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const job = await (await fetch(`${server.base}/v1/jobs/${id}`, {
      headers: { authorization: `Bearer ${token}` },
    })).json();
    assert.equal(job.params.beam_size, 3);
    await beam.fill('1');
  });

  it('starts a job from a saved workflow', async () => {
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const res = await fetch(`${server.base}/v1/workflows`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'Speech regions only', params: { job_type: 'vad' } }),
    });
    assert.equal(res.status, 201, await res.clone().text());
    await pageA.getByRole('button', { name: 'Refresh jobs' }).click();
    await pageA.locator('#workflow option', { hasText: 'Speech regions only' }).waitFor({ state: 'attached' });
    await pageA.getByLabel('Workflow', { exact: true }).selectOption({ label: 'Speech regions only' });
    assert.equal(await pageA.getByLabel('Model').isDisabled(), true, 'the workflow decides the settings');
    assert.notEqual(await pageA.locator('#file-select').inputValue(), '');
    const id = await startJob(pageA);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.locator('.status').filter({ hasText: 'completed' }).waitFor({ timeout: 60_000 });
    assert.match(await item.innerText(), /Speech regions/);
    const view = pageA.locator('#job-view');
    assert.match(await view.locator('#job-facts').innerText(), /Workflow\s+Speech regions only/);
    await view.locator('#transcript li').first().waitFor();
    assert.equal(await view.locator('#transcript-title').innerText(), 'Speech regions');
    await pageA.getByLabel('Workflow', { exact: true }).selectOption('');
  });

  it('cancels a running job', async () => {
    await pageA.getByLabel('Model').selectOption('tiny.en');
    const id = await startJob(pageA);
    const item = pageA.locator(`li[data-job-id="${id}"]`);
    await item.getByRole('button', { name: 'Cancel job for jfk.wav' }).click();
    await item.locator('.status').filter({ hasText: 'cancelled' }).waitFor({ timeout: 30_000 });
    assert.equal(await item.getByRole('button', { name: /^Cancel/ }).isHidden(), true);
    const token = await pageA.evaluate(() => sessionStorage.getItem('murmur.token'));
    const job = await (await fetch(`${server.base}/v1/jobs/${id}`, {
      headers: { authorization: `Bearer ${token}` },
    })).json();
    assert.equal(job.status, 'cancelled');
  });

  it('fits a phone screen without horizontal scrolling', async () => {
    const ctx = await browser.newContext({
      viewport: PHONE, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
    });
    try {
      const page = await ctx.newPage();
      const w = watch(page);
      await page.goto(server.base);
      // A wrong password is refused in words; the right one signs in.
      await page.locator('#login-email').fill(alice.email);
      await page.locator('#login-password').fill('not the password');
      await page.getByRole('button', { name: 'Sign in' }).click();
      assert.match(await page.locator('#toasts .toast').last().innerText(), /wrong email or password/i);
      await page.locator('#login-password').fill(alice.password);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator(`li[data-job-id="${jobId}"]`).waitFor();
      await page.locator(`li[data-job-id="${jobId}"] .job-title`).click();
      await page.locator('#transcript li').first().waitFor();
      // A mobile browser widens its layout viewport to content that
      // overflows, so compare with the device width, not innerWidth.
      await assertFitsWidth(page, PHONE.width);
      await page.screenshot({ path: join(artifacts, 'phone.png'), fullPage: true });
      assert.deepEqual(await axeViolations(page), [], 'on the phone');
      assert.deepEqual(w.errors, []);
      assert.deepEqual(w.csp, []);
    } finally {
      await ctx.close();
    }
  });

  it('shows another tenant none of the first tenant’s jobs', async () => {
    // Bob has been signed in, live, the whole time.
    assert.equal(await pageB.locator('#conn').getAttribute('data-state'), 'live');
    assert.equal(await pageB.locator('#job-list li').count(), 0);
    assert.equal(await pageB.locator('#jobs-empty').isVisible(), true);
    assert.equal(await pageB.locator('#file-select option:not([value=""])').count(), 0);
    // Nor her webhook endpoints.
    await pageB.getByRole('button', { name: 'Refresh webhooks' }).click();
    assert.equal(await pageB.locator('#webhook-list li').count(), 0);
    assert.equal(await pageB.locator('#webhooks-empty').isVisible(), true);
    const html = await pageB.content();
    for (const hers of [jobId, 'jfk.wav', 'talk.wav', webhookId, receiver.base]) {
      assert.ok(!html.includes(hers), `nothing of alice’s shows (${hers})`);
    }
    await pageB.getByRole('button', { name: 'Refresh jobs' }).click();
    assert.equal(await pageB.locator('#job-list li').count(), 0);
    const token = await pageB.evaluate(() => sessionStorage.getItem('murmur.token'));
    const res = await fetch(`${server.base}/v1/jobs/${jobId}`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(res.status, 404);
    for (const path of [`/v1/webhooks/${webhookId}`, `/v1/webhooks/${webhookId}/deliveries`]) {
      const other = await fetch(`${server.base}${path}`, { headers: { authorization: `Bearer ${token}` } });
      assert.equal(other.status, 404, path);
    }
  });

  it('signs out, forgetting the token', async () => {
    await pageB.getByRole('button', { name: 'Sign out' }).click();
    await pageB.locator('#auth').waitFor();
    assert.equal(await pageB.evaluate(() => sessionStorage.getItem('murmur.token')), null);
    await pageB.reload();
    await pageB.locator('#login-form').waitFor();
    assert.equal(await pageB.locator('#app').isVisible(), false);
    assert.deepEqual(await axeViolations(pageB), [], 'the sign-in screen');
  });

  it('raised no page errors and no CSP violations', () => {
    assert.deepEqual(watchA.errors, []);
    assert.deepEqual(watchA.csp, []);
  });
});
