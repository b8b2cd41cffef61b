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
