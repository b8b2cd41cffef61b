// What both browser suites share: how Chromium is started, the
// accessibility check and the no-sideways-scrolling check. Not a test
// file itself (node --test runs only *.test.mjs here).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

// As the machine notes prescribe. Playwright's launch() itself starts
// Chromium with a new, empty --user-data-dir of its own (and refuses one
// in args), so every run gets a fresh profile.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// axe-core, the accessibility rules engine, run inside the page. It is
// evaluated through the DevTools protocol, which the page's CSP does not
// govern, so the page needs no inline script for it.
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** WCAG 2.1 A and AA violations axe finds on the page as it is now. */
export async function axeViolations(page) {
  await page.evaluate(AXE);
  return page.evaluate(async () => {
    const r = await window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
    });
    return r.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  });
}

/**
 * Fails unless the page fits `width` CSS pixels: nothing scrolls sideways.
 * A mobile browser widens its layout viewport to content that overflows,
 * so innerWidth must still be the device's width.
 */
export async function assertFitsWidth(page, width) {
  const overflow = await page.evaluate(() => ({
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    inner: window.innerWidth,
  }));
  assert.ok(overflow.doc <= width && overflow.body <= width && overflow.inner === width,
    `wider than the ${width} px screen: ${JSON.stringify(overflow)}`);
}
