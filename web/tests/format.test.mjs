// The page's pure formatting helpers, in Node (they touch no DOM).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fmt from '../format.js';

test('segment timestamps are minutes, seconds and hundredths', () => {
  assert.equal(fmt.stamp(0), '00:00.00');
  assert.equal(fmt.stamp(7.74), '00:07.74');
  assert.equal(fmt.stamp(65.5), '01:05.50');
  assert.equal(fmt.stamp(3600), '60:00.00');
});

test('durations read as clock times', () => {
  assert.equal(fmt.duration(11), '0:11');
  assert.equal(fmt.duration(600), '10:00');
  assert.equal(fmt.duration(3723), '1:02:03');
  assert.equal(fmt.duration(null), '–');
});

test('sizes use decimal units', () => {
  assert.equal(fmt.bytes(512), '512 B');
  assert.equal(fmt.bytes(352_044), '352 KB');
  assert.equal(fmt.bytes(2_000_000), '2.0 MB');
  assert.equal(fmt.bytes(20_000_000), '20 MB');
});

test('progress becomes a clamped whole percent', () => {
  assert.equal(fmt.percent(0), 0);
  assert.equal(fmt.percent(0.456), 46);
  assert.equal(fmt.percent(1), 100);
  assert.equal(fmt.percent(1.2), 100);
  assert.equal(fmt.percent(undefined), 0);
});

test('download names drop the extension and path separators', () => {
  assert.equal(fmt.baseName('jfk.wav'), 'jfk');
  assert.equal(fmt.baseName('talk.final.mp3'), 'talk.final');
  assert.equal(fmt.baseName('a/b.wav'), 'a_b');
  assert.equal(fmt.baseName('.hidden'), '.hidden');
  assert.equal(fmt.baseName(''), 'murmur');
});

test('only queued and running jobs are active', () => {
  assert.equal(fmt.isActive('queued'), true);
  assert.equal(fmt.isActive('running'), true);
  for (const s of ['completed', 'failed', 'cancelled']) assert.equal(fmt.isActive(s), false);
});

test('the plan bounds the beam, absent meaning the widest any job may ask for', () => {
  assert.equal(fmt.beamLimit({ max_beam_size: 5 }), 5);
  assert.equal(fmt.beamLimit({}), fmt.MAX_BEAM);
  assert.equal(fmt.beamLimit({ max_beam_size: 50 }), fmt.MAX_BEAM);
  assert.equal(fmt.beamLimit(null), fmt.MAX_BEAM);
});

test('a worker’s cells say what it reports and "–" for the rest', () => {
  const now = Date.parse('2026-12-02T05:01:05Z');
  const busy = fmt.workerCells({
    index: 0,
    node: 'local',
    device: 'cpu',
    state: 'busy',
    job: {
      job_id: 'j_1', tenant_id: 't_1', stage: 'transcribe', since: '2026-12-02T05:00:00.500Z',
    },
    jobs_completed: 12,
    audio_seconds: 1830.5,
    compute_type: 'int8',
    models: ['tiny.en', 'silero-vad'],
  }, now);
  assert.deepEqual(busy, {
    node: 'local',
    device: 'cpu',
    compute: 'int8',
    state: 'busy',
    job: 'j_1',
    tenant: 't_1',
    stage: 'transcribe',
    elapsed: '1:05',
    jobs: '12',
    audio: '30:31',
    models: 'tiny.en, silero-vad',
  });
  // As the route answered before compute_type and models: no error, "–".
  const idle = fmt.workerCells({
    index: 1, node: 'gpu-box-1', device: 'cuda:0', state: 'idle', job: null, jobs_completed: 0, audio_seconds: 0,
  }, now);
  assert.equal(idle.compute, '–');
  assert.equal(idle.models, '–');
  assert.equal(idle.job, '–');
  assert.equal(idle.stage, '–');
  assert.equal(idle.elapsed, '–');
  assert.equal(idle.audio, '0:00');
  // No model loaded yet is not the same as not reported.
  assert.equal(fmt.workerCells({ models: [] }).models, 'none');
  // A job taken before its first stage.
  assert.equal(fmt.workerCells({ job: { job_id: 'j_2', stage: null, since: '2026-12-02T05:01:00Z' } }, now).stage, 'starting');
  // Every column has its cell.
  assert.deepEqual(Object.keys(busy).sort(), fmt.WORKER_COLUMNS.map(([k]) => k).sort());
});
