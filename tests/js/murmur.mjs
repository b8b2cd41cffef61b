// Test harness shared by the JavaScript suites (Flowise nodes, dashboard):
// starts the real `murmur` binary on a free loopback port with a fresh data
// dir, the shared model cache and a small tier table, and signs tenants up.
//
// MURMUR_BIN picks the binary (default: target/debug/murmur, which
// `cargo test` / `cargo build` leave behind).

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export function murmurBin() {
  const bin = process.env.MURMUR_BIN || join(repo, 'target', 'debug', 'murmur');
  if (!existsSync(bin)) {
    throw new Error(`no murmur binary at ${bin}: run \`cargo build\` first or set MURMUR_BIN`);
  }
  return bin;
}

export function cacheDir() {
  return process.env.MURMUR_CACHE_DIR || join(homedir(), '.cache', 'murmur');
}

export function modelsDir() {
  return join(cacheDir(), 'models');
}

/** Installs models into the shared cache (fetching them the first time). */
export function installModels(names) {
  execFileSync(murmurBin(), ['models', 'fetch', ...names], {
    env: { ...process.env, MURMUR__MODELS__DIR: modelsDir() },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

/** Path of a real test recording (`jfk`, `pyannote`, `music`), fetched once. */
export function testAudio(name) {
  return execFileSync(murmurBin(), ['test-audio', name], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
}

// Same shape as the product's tier table, with small sizes so limits can be
// crossed in a test.
export const TEST_TIERS = `
default_tier = "basic"
[tiers.basic]
rank = 0
max_file_bytes = 2000000
concurrent_jobs = 2
models = ["tiny", "base"]
diarization = false
bgm_separation = false
translation = "limited"
translation_max_file_seconds = 600
translation_jobs_per_month = 20
storage_bytes = 20000000
max_workflows = 5
max_beam_size = 5
max_batch_size = 4
[tiers.premium]
rank = 1
max_file_bytes = 20000000
concurrent_jobs = 5
models = ["tiny", "base", "small", "medium"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 200000000
max_workflows = 20
[tiers.enterprise]
rank = 2
max_file_bytes = 40000000
concurrent_jobs = 10
models = ["*"]
diarization = true
bgm_separation = true
translation = "full"
storage_bytes = 1000000000
[entitlements]
premium = "premium"
enterprise = "enterprise"
`;

/**
 * Starts a server. Resolves to `{ base, dataDir, stop() }` once it listens.
 * `env` adds MURMUR__... settings.
 */
export async function startMurmur({ env = {} } = {}) {
  const tmp = mkdtempSync(join(tmpdir(), 'murmur-js-'));
  const tiers = join(tmp, 'tiers.toml');
  writeFileSync(tiers, TEST_TIERS);
  const dataDir = join(tmp, 'data');
  const child = spawn(
    murmurBin(),
    ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir],
    {
      env: {
        ...process.env,
        RUST_LOG: process.env.RUST_LOG || 'warn',
        MURMUR__BILLING__TIERS_FILE: tiers,
        MURMUR__AUTH__ARGON2_MEMORY_KIB: '1024',
        MURMUR__AUTH__ARGON2_ITERATIONS: '1',
        MURMUR__MODELS__FETCH_MISSING: 'false',
        MURMUR__MODELS__DIR: modelsDir(),
        MURMUR__MODELS__DEFAULT_MODEL: 'tiny.en',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const base = await new Promise((resolveBase, reject) => {
    const lines = createInterface({ input: child.stdout });
    child.once('exit', (code) => reject(new Error(`murmur exited (${code}) before listening`)));
    lines.on('line', (line) => {
      const m = line.match(/^murmur listening on (\S+)/);
      if (m) resolveBase(m[1]);
    });
  });
  let stopped = false;
  return {
    base,
    dataDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}

let counter = 0;

/** Signs up a new tenant; resolves to `{ token, tenant, user, email, password }`. */
export async function signup(base, name = 'js') {
  counter += 1;
  const email = `${name}-${process.pid}-${counter}-${Date.now()}@example.test`;
  const password = 'correct horse battery staple';
  const res = await fetch(`${base}/v1/auth/signup`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ tenant: `${name} ${counter}`, email, password }),
  });
  if (res.status !== 201) throw new Error(`signup: ${res.status} ${await res.text()}`);
  const body = await res.json();
  return { ...body, email, password };
}

/** Moves a tenant to a tier through the operator command, as support would. */
export function setTier(server, tenantId, tier) {
  execFileSync(murmurBin(), ['admin', '--data-dir', server.dataDir, 'set-tier', tenantId, tier], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}
