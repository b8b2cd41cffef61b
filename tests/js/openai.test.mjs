// The official OpenAI SDK (npm `openai`) pointed at Murmur's
// OpenAI-compatible endpoints, unchanged: the way Flowise's LocalAI
// speech-to-text option and other OpenAI clients use Murmur.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import OpenAI, { toFile } from 'openai';

import { startMurmur, signup, installModels, testAudio } from './murmur.mjs';

const ASK_NOT = /ask not what your country can do for you/i;

let server;
let tenant;
let client;
let jfk;

async function apiKey(base, token, name) {
  const res = await fetch(`${base}/v1/api-keys`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  assert.equal(res.status, 201, await res.clone().text());
  return (await res.json()).token;
}

before(async () => {
  installModels(['tiny.en', 'base', 'silero-vad']);
  jfk = testAudio('jfk');
  server = await startMurmur();
  tenant = await signup(server.base, 'openai');
  client = new OpenAI({
    apiKey: await apiKey(server.base, tenant.token, 'openai sdk'),
    baseURL: `${server.base}/v1`,
    maxRetries: 0,
  });
});

after(async () => {
  await server?.stop();
});

test('transcriptions.create returns the text, as json and verbose_json', async () => {
  const plain = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'whisper-1',
  });
  assert.match(plain.text, ASK_NOT);

  const verbose = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'tiny.en',
    response_format: 'verbose_json',
  });
  assert.match(verbose.text, ASK_NOT);
  assert.equal(verbose.language, 'en');
  assert.ok(Math.abs(verbose.duration - 11) < 0.5, `duration ${verbose.duration}`);
  assert.ok(verbose.segments.length >= 1);
  for (const s of verbose.segments) {
    assert.ok(s.start >= 0 && s.end > s.start && s.end <= verbose.duration + 0.1, JSON.stringify(s));
  }
});

test('timestamp_granularities ["word"] gives every word its time', async () => {
  const verbose = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'tiny.en',
    response_format: 'verbose_json',
    timestamp_granularities: ['word'],
  });
  assert.match(verbose.text, ASK_NOT);
  assert.ok(Array.isArray(verbose.words) && verbose.words.length > 0, JSON.stringify(verbose));
  const letters = (s) => s.toLowerCase().replace(/[^a-z' ]/g, '').split(/\s+/).filter(Boolean);
  assert.deepEqual(letters(verbose.words.map((w) => w.word).join(' ')), letters(verbose.text));
  let lastEnd = 0;
  for (const w of verbose.words) {
    assert.ok(w.start <= w.end && w.start >= lastEnd - 1e-9, JSON.stringify(w));
    lastEnd = w.end;
  }
  assert.ok(verbose.words[0].start < 1.0, JSON.stringify(verbose.words[0]));
  const last = verbose.words[verbose.words.length - 1];
  assert.deepEqual(letters(last.word), ['country']);
  assert.ok(last.end > 10.0, JSON.stringify(last));
});

test('srt, vtt and text come back as strings', async () => {
  const srt = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'whisper-1',
    response_format: 'srt',
  });
  assert.equal(typeof srt, 'string');
  assert.match(srt, /^1\r?\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}/);
  assert.match(srt, ASK_NOT);

  const vtt = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'whisper-1',
    response_format: 'vtt',
  });
  assert.match(vtt, /^WEBVTT/);

  const text = await client.audio.transcriptions.create({
    file: await toFile(createReadStream(jfk), 'speech.wav'),
    model: 'whisper-1',
    response_format: 'text',
  });
  assert.match(text, ASK_NOT);
});

test('translations.create translates to English with a multilingual model', async () => {
  const out = await client.audio.translations.create({
    file: createReadStream(jfk),
    model: 'base',
  });
  assert.match(out.text, /ask not what your country can do for you/i);
});

test('errors arrive as the SDK error classes with our problem detail', async () => {
  const wrong = new OpenAI({ apiKey: 'not-a-token', baseURL: `${server.base}/v1`, maxRetries: 0 });
  await assert.rejects(
    wrong.audio.transcriptions.create({ file: createReadStream(jfk), model: 'whisper-1' }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );

  // Over the basic tier's file size (2 MB in the test tiers).
  const big = Buffer.alloc(3_000_000);
  await assert.rejects(
    client.audio.transcriptions.create({ file: await toFile(big, 'big.wav'), model: 'whisper-1' }),
    (e) => e instanceof OpenAI.APIError && e.status === 413,
  );

  // Not audio at all.
  await assert.rejects(
    client.audio.transcriptions.create({
      file: await toFile(Buffer.from('this is not audio'), 'notes.wav'),
      model: 'whisper-1',
    }),
    (e) => e instanceof OpenAI.UnprocessableEntityError && /audio/i.test(e.message),
  );

  await assert.rejects(
    client.audio.transcriptions.create({
      file: createReadStream(jfk),
      model: 'whisper-1',
      // Not a format OpenAI or Murmur offers.
      response_format: 'mp3',
    }),
    (e) => e instanceof OpenAI.BadRequestError,
  );
});

test('models.list and models.retrieve see the installed models', async () => {
  const ids = [];
  for await (const model of client.models.list()) {
    assert.equal(model.object, 'model');
    assert.equal(typeof model.created, 'number');
    ids.push(model.id);
  }
  for (const id of ['tiny.en', 'base', 'whisper-1']) {
    assert.ok(ids.includes(id), `${id} in ${ids}`);
  }
  const tiny = await client.models.retrieve('tiny.en');
  assert.equal(tiny.id, 'tiny.en');
  assert.equal(tiny.installed, true);
  const alias = await client.models.retrieve('whisper-1');
  const byDefault = (await client.models.list()).data.find((m) => m.default);
  assert.equal(alias.alias_of, byDefault.id);
  await assert.rejects(client.models.retrieve('gpt-4o'), (e) => e instanceof OpenAI.NotFoundError);
});

test('stream: true yields text deltas, then the whole text', async () => {
  const stream = await client.audio.transcriptions.create({
    file: createReadStream(jfk),
    model: 'tiny.en',
    stream: true,
  });
  const events = [];
  for await (const event of stream) {
    events.push(event);
  }
  const done = events.at(-1);
  assert.equal(done.type, 'transcript.text.done');
  assert.match(done.text, ASK_NOT);
  const deltas = events.slice(0, -1);
  assert.ok(deltas.length >= 1);
  assert.ok(deltas.every((e) => e.type === 'transcript.text.delta'));
  // The deltas laid end to end are the text, to the character.
  assert.equal(deltas.map((e) => e.delta).join(''), done.text);

  // Streamed translations are refused, as at OpenAI.
  await assert.rejects(
    client.audio.translations.create({ file: createReadStream(jfk), model: 'tiny.en', stream: true }),
    (e) => e instanceof OpenAI.BadRequestError,
  );
});

test("another tenant's SDK client sees none of these jobs", async () => {
  const other = await signup(server.base, 'openai-other');
  const mine = await (
    await fetch(`${server.base}/v1/jobs`, { headers: { authorization: `Bearer ${tenant.token}` } })
  ).json();
  assert.ok(mine.items.length >= 5, `own jobs: ${mine.items.length}`);
  const theirs = await (
    await fetch(`${server.base}/v1/jobs`, { headers: { authorization: `Bearer ${other.token}` } })
  ).json();
  assert.deepEqual(theirs.items, []);
  for (const job of mine.items) {
    const res = await fetch(`${server.base}/v1/jobs/${job.id}`, {
      headers: { authorization: `Bearer ${other.token}` },
    });
    assert.equal(res.status, 404);
  }
});
