// The dashboard in a real browser: Debian's Chromium driven by playwright-core, against a
// real `thinclone serve` that crates/thinclone/tests/dashboard.rs started. It exits non-zero
// with the reason on the first thing that does not hold, and on any error in the browser's
// console. Environment:
//
//   DASHBOARD_URL      the server's base URL
//   TOKEN_MAKER        an image creator of team red: makes the image and the clone
//   TOKEN_MATE         a clone user of team red: sees the clone, may not use it
//   TOKEN_BLUE         a clone user of team blue: sees neither
//   SOURCE_DIR         a stopped database's data directory inside a registered source
//   DATA_DIR           the daemon's data directory (to kill a clone's server, as a crash would)
//   PSQL               the psql program, to connect to the clone with its connection string
//   MODE               `flow` (the whole walk) or `render` (first render of each page only)
//   SCREENSHOTS        a directory to write the pages' screenshots into (not set: none)
//   CHROMIUM           the browser (default /usr/bin/chromium)
//   RENDER_RUNS        loads of each page whose first render is measured (default 5)
//
// It prints `render PAGE median MS, min MS, max MS (…)` for each page's first render, and
// `dashboard: ok` at the end.

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env('DASHBOARD_URL').replace(/\/$/, '');
const MODE = process.env.MODE || 'flow';
const SHOTS = process.env.SCREENSHOTS || '';
const WIDE = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };
const LONG = 120_000;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

// Every console error fails the run, but for the browser's own line about an HTTP error
// answer that the walk provokes on purpose (a refused removal, an expired token, a clone
// another team cannot see).
const consoleErrors = [];
const EXPECTED_HTTP = /^Failed to load resource: the server responded with a status of (401|404|409) /;

async function session(name, viewport = WIDE) {
  const context = await browser.newContext({ viewport, serviceWorkers: 'block' });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    if (EXPECTED_HTTP.test(msg.text())) return;
    consoleErrors.push(`[${name}] ${msg.text()}`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`[${name}] uncaught: ${e.message}`));
  return { context, page };
}

/** Waits until the page for `name` has rendered its data. */
async function rendered(page, name, timeout = 30_000) {
  await page.waitForSelector(`main[data-rendered="${name}"]`, { timeout });
}

async function signIn(page, token) {
  await page.goto(`${BASE}/`);
  await rendered(page, 'sign-in');
  // By keyboard: the token field has the focus.
  check(await page.evaluate(() => document.activeElement && document.activeElement.id === 'token'), 'the token field has the focus');
  await page.keyboard.type(token);
  await page.keyboard.press('Enter');
  await rendered(page, 'images');
}

async function go(page, hash, name) {
  await page.evaluate((h) => (location.hash = h), hash);
  await rendered(page, name);
}

async function shoot(page, file) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  for (const [size, viewport] of [['1280x800', WIDE], ['390x844', PHONE]]) {
    await page.setViewportSize(viewport);
    await page.waitForTimeout(150);
    await page.screenshot({ path: join(SHOTS, `${file}-${size}.png`) });
  }
  await page.setViewportSize(WIDE);
}

/**
 * The first render of each page after a full load of the document (navigation start to the
 * page drawn with its data), in milliseconds: RENDER_RUNS loads each (5 by default), their
 * median, least and most.
 */
async function measure(page, routes) {
  const runs = Number(process.env.RENDER_RUNS || 5);
  for (const [hash, name] of routes) {
    await page.goto(`${BASE}/${hash}`);
    await rendered(page, name, LONG);
    const times = [];
    for (let i = 0; i < runs; i++) {
      await page.reload();
      await rendered(page, name, LONG);
      const ms = await page.evaluate((n) => {
        const entries = performance.getEntriesByName(`first-render:${n}`);
        return entries.length ? entries[0].duration : -1;
      }, name);
      check(ms >= 0, `no first-render measure for ${name}`);
      times.push(ms);
    }
    times.sort((a, b) => a - b);
    const rows = await page.locator('table.data tbody tr').count();
    const median = times[Math.floor(times.length / 2)];
    console.log(
      `render ${name} median ${median.toFixed(0)} ms, min ${times[0].toFixed(0)}, max ${times[times.length - 1].toFixed(0)} ` +
        `(${runs} loads; ${rows} table rows)`,
    );
  }
}

const PAGES = [
  ['#/images', 'images'],
  ['#/clones', 'clones'],
  ['#/agents', 'agents'],
  ['#/activity', 'activity'],
  ['#/images/new', 'image-new'],
  ['#/clones/new', 'clone-new'],
];

function psql(url, sql) {
  return execFileSync(env('PSQL'), [url, '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: { PATH: process.env.PATH, PGCONNECT_TIMEOUT: '10' },
    encoding: 'utf8',
  }).trim();
}

async function flow() {
  const maker = await session('maker');
  const page = maker.page;
  let loads = 0;
  page.on('load', () => (loads += 1));

  // Sign in with a token; a wrong one is refused with the server's message.
  await page.goto(`${BASE}/`);
  await rendered(page, 'sign-in');
  await shoot(page, 'sign-in');
  await page.fill('#token', 'thinclone_wrong');
  await page.click('button[type=submit]');
  await page.waitForSelector('#sign-in-error:not([hidden])');
  check((await page.textContent('#sign-in-error')).length > 10, 'a wrong token is refused with a message');
  await signIn(page, env('TOKEN_MAKER'));
  check((await page.textContent('#who')).includes('maker'), 'the header names the user');

  // Make an image from the test source, with a masking rule and a script.
  await page.click('text=Make an image');
  await rendered(page, 'image-new');
  await shoot(page, 'image-new');
  await page.fill('#image-name', 'orders');
  await page.fill('#image-from', env('SOURCE_DIR'));
  await page.fill('#image-mask', 'public.customers email email');
  await page.setInputFiles('#image-scripts', {
    name: 'prep.sql',
    mimeType: 'text/plain',
    buffer: Buffer.from('CREATE TABLE prepared AS SELECT 42 AS answer;'),
  });
  await page.click('form button[type=submit]');
  await rendered(page, 'images');
  const row = page.locator('#image-list tbody tr', { hasText: 'orders' });
  await row.locator('.status-ready').waitFor({ timeout: LONG });
  check((await row.textContent()).includes('1 masking rule, 1 script'), 'the image shows its masking rules and scripts');

  // Make a clone and watch it become ready without a reload.
  const loadsBefore = loads;
  await go(page, '#/clones/new', 'clone-new');
  await page.fill('#clone-name', 'dev1');
  await page.selectOption('#clone-image', 'orders');
  await page.selectOption('#clone-expiry', '86400');
  await page.click('form button[type=submit]');
  await rendered(page, 'clone');
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });
  check(loads === loadsBefore, 'the clone became ready on the page without a reload');

  // Its connection string, read from the page, connects.
  const url = (await page.textContent('.summary .conn code.url')).trim();
  check(/^[a-z]+:\/\/[^:]+:[^@]+@/.test(url), `a connection string with a password: ${url}`);
  const password = decodeURIComponent(new URL(url).password);
  check(password.length >= 8, 'the connection string carries a password');
  check(psql(url, 'SELECT answer FROM prepared') === '42', 'the script ran on the image');
  check(!psql(url, 'SELECT email FROM customers ORDER BY id LIMIT 1').includes('corp.example'), 'the email column is masked');
  psql(url, 'CREATE TABLE scratch AS SELECT 1 AS x');
  await page.click('button.copy');

  // A checkpoint, so that the page shows one.
  await page.fill('#cp-message', 'before the reset');
  await page.click('button:has-text("Checkpoint")');
  await page.locator('text=before the reset').first().waitFor({ timeout: LONG });
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });

  // Revert to the checkpoint: what was made after it is gone, what was made before stays.
  psql(url, 'CREATE TABLE later AS SELECT 2 AS y');
  await page.selectOption('#revert-to', 'cp1');
  await page.click('button:has-text("Revert")');
  await page.waitForSelector('dialog#confirm[open]');
  await page.click('#confirm-ok');
  await page.locator('section', { hasText: 'Activity' }).locator('text=clone.revert').first().waitFor({ timeout: LONG });
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });
  check(psql(url, "SELECT count(*) FROM pg_class WHERE relname IN ('scratch', 'later')") === '1', 'the revert kept scratch and dropped later');

  // Stop and start.
  await page.click('button:has-text("Stop")');
  await page.click('#confirm-ok');
  await page.locator('.summary .status-stopped').waitFor({ timeout: LONG });
  await page.click('button:has-text("Start")');
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });

  // Its server dies (the daemon runs with --no-repair): the page shows it degraded, with the
  // reason, without a reload; Start brings it back.
  const pid = Number(readFileSync(join(env('DATA_DIR'), 'clones/dev1/data/postmaster.pid'), 'utf8').split('\n')[0]);
  check(pid > 1, `a server pid for dev1: ${pid}`);
  process.kill(pid, 'SIGKILL');
  await page.locator('.summary .status-degraded').waitFor({ timeout: LONG });
  const why = (await page.textContent('.summary .status-cell .message')).trim();
  check(why.length > 5, `a degraded clone says why: ${why}`);
  console.log(`degraded: ${why}`);
  await shoot(page, 'clone-degraded');
  await go(page, '#/clones', 'clones');
  check((await page.textContent('#clone-list')).includes(why), 'the clones page shows the reason too');
  await go(page, '#/clones/dev1', 'clone');
  await page.click('button:has-text("Start")');
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });

  // Protect: then it cannot be removed; unprotect again.
  await page.getByRole('button', { name: 'Protect', exact: true }).click();
  await page.locator('.summary dd', { hasText: 'protected' }).waitFor({ timeout: LONG });
  check(await page.locator('button:has-text("Remove")').isDisabled(), 'a protected clone offers no removal');
  await page.getByRole('button', { name: 'Unprotect', exact: true }).click();
  await page.getByRole('button', { name: 'Protect', exact: true }).waitFor({ timeout: LONG });

  // A branch from the checkpoint: a clone of its own, on its own page; then removed.
  await page.fill('#branch-name', 'dev1-b');
  await page.selectOption('#branch-from', 'cp1');
  await page.click('button:has-text("Branch")');
  await rendered(page, 'clone');
  await page.locator('h1', { hasText: 'dev1-b' }).waitFor();
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });
  const branchUrl = (await page.textContent('.summary .conn code.url')).trim();
  check(psql(branchUrl, "SELECT count(*) FROM pg_class WHERE relname = 'scratch'") === '1', 'the branch has the data of the checkpoint');
  await page.click('button:has-text("Remove")');
  await page.click('#confirm-ok');
  await rendered(page, 'clones');
  await page.locator('#clone-list a', { hasText: /^dev1-b$/ }).waitFor({ state: 'detached', timeout: LONG });
  await go(page, '#/clones/dev1', 'clone');

  // The pages, as they look with an image, a clone and a checkpoint.
  await shoot(page, 'clone');
  await go(page, '#/clones', 'clones');
  check((await page.textContent('#clone-list')).includes(url), 'the clones page shows the owner the connection string');
  await shoot(page, 'clones');
  await go(page, '#/images', 'images');
  const saving = await page.textContent('#storage-chart li[data-image="orders"] .saving');
  check(/^1 clone of .+ use .+/.test(saving), `the storage picture says the saving: ${saving}`);
  await shoot(page, 'images');
  await go(page, '#/agents', 'agents');
  check((await page.textContent('main')).includes('online'), 'the agent is online');
  await shoot(page, 'agents');
  await go(page, '#/activity', 'activity');
  await page.fill('#filter-target', 'clone dev1');
  await page.click('form.filters button');
  await page.locator('main table.data', { hasText: 'clone.create' }).waitFor();
  // By user, and by time: nothing is recorded in the future.
  await page.fill('#filter-user', 'maker');
  await page.fill('#filter-since', '2999-01-01T00:00');
  await page.click('form.filters button');
  await page.locator('main p.empty', { hasText: 'Nothing matches.' }).waitFor();
  await page.fill('#filter-since', '');
  await page.click('form.filters button');
  await page.locator('main table.data', { hasText: 'clone.create' }).waitFor();
  check(!(await page.locator('main table.data tbody tr', { hasText: 'the server' }).count()), 'the user filter keeps the server out');
  await page.fill('#filter-user', '');
  await page.click('form.filters button');
  await page.locator('main table.data', { hasText: 'the server' }).waitFor();
  await shoot(page, 'activity');
  await go(page, '#/clones/new', 'clone-new');
  await shoot(page, 'clone-new');

  // Reset, with confirmation, by keyboard: Escape cancels, Enter on the focused Confirm
  // confirms. The table made in the clone is gone.
  await go(page, '#/clones/dev1', 'clone');
  await page.focus('button:has-text("Reset")');
  await page.keyboard.press('Enter');
  await page.waitForSelector('dialog#confirm[open]');
  await page.keyboard.press('Escape');
  await page.waitForSelector('dialog#confirm', { state: 'hidden' });
  check(!(await page.locator('.summary .status-resetting').count()), 'a cancelled reset did nothing');
  await page.focus('button:has-text("Reset")');
  await page.keyboard.press('Enter');
  await page.waitForSelector('dialog#confirm[open]');
  check(await page.evaluate(() => document.activeElement.id === 'confirm-ok'), 'the dialog focuses its Confirm button');
  await page.keyboard.press('Enter');
  await page.locator('.summary .status-ready').waitFor({ timeout: LONG });
  await page.locator('section', { hasText: 'Activity' }).locator('text=clone.reset').first().waitFor({ timeout: LONG });
  const after = psql(url, "SELECT count(*) FROM pg_class WHERE relname = 'scratch'");
  check(after === '0', `the reset clone has no table scratch (${after})`);

  // Removing an image that has clones is refused, and the page says why.
  await go(page, '#/images', 'images');
  await page.click('button[aria-label="Remove image orders"]');
  await page.click('#confirm-ok');
  const notice = page.locator('main .notice.error');
  await notice.waitFor();
  const reason = await notice.textContent();
  check(/clone/.test(reason), `the refusal says why: ${reason}`);
  console.log(`refused: ${reason}`);

  // A clone user of the same team sees the clone, but not its password, and no actions.
  const mate = await session('mate');
  await signIn(mate.page, env('TOKEN_MATE'));
  await go(mate.page, '#/clones', 'clones');
  check((await mate.page.textContent('#clone-list')).includes('dev1'), 'a team mate sees the clone');
  await go(mate.page, '#/clones/dev1', 'clone');
  for (const p of [mate.page]) {
    const html = await p.content();
    check(!html.includes(password), 'a user who may not use the clone is not shown its password');
  }
  check(await mate.page.locator('.actions-panel').isHidden(), 'a user who may not use the clone is offered no actions');
  for (const [hash, name] of PAGES) {
    await go(mate.page, hash, name);
    check(!(await mate.page.content()).includes(password), `the ${name} page shows a team mate no password`);
  }
  // The skip link moves the focus to the page and stays on it.
  const where = await mate.page.evaluate(() => location.hash);
  await mate.page.focus('a.skip');
  await mate.page.keyboard.press('Enter');
  check(await mate.page.evaluate((h) => document.activeElement.id === 'view' && location.hash === h, where), 'the skip link focuses the page');
  // The pages are links: the keyboard reaches them.
  await mate.page.focus('a[data-nav="clones"]');
  await mate.page.keyboard.press('Enter');
  await rendered(mate.page, 'clones');
  await go(mate.page, '#/images', 'images');
  check(!(await mate.page.locator('button[aria-label="Remove image orders"]').count()), 'a clone user is offered no image removal');
  check(!(await mate.page.locator('text=Make an image').count()), 'a clone user is offered no image making');

  // A user of another team sees neither the image nor its clones.
  const blue = await session('blue');
  await signIn(blue.page, env('TOKEN_BLUE'));
  check(!(await blue.page.textContent('main')).includes('orders'), 'another team does not see the image');
  await go(blue.page, '#/clones', 'clones');
  check(!(await blue.page.textContent('main')).includes('dev1'), 'another team does not see the clone');
  await go(blue.page, '#/clones/dev1', 'clone');
  check(!(await blue.page.content()).includes(password), 'another team is not shown the password');
  check((await blue.page.textContent('.summary')).length > 0, 'another team is told there is no such clone');

  // An expired token sends the user back to sign-in. It lives 6 s: long enough to sign in on a
  // loaded machine.
  const madeAt = Date.now();
  const made = await mate.page.evaluate(async () => {
    const r = await fetch('/v1/tokens', {
      method: 'POST',
      headers: { Authorization: `Bearer ${sessionStorage.getItem('thinclone.token')}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ description: 'expires soon', expires_in: 6 }),
    });
    return r.json();
  });
  const short = await session('expiring');
  await signIn(short.page, made.secret);
  await short.page.waitForTimeout(Math.max(0, madeAt + 7500 - Date.now()));
  await short.page.evaluate(() => (location.hash = '#/clones'));
  await rendered(short.page, 'sign-in');
  const ended = await short.page.textContent('#sign-in-error');
  check(/session has ended/.test(ended), `the expired session is said so: ${ended}`);
  check(await short.page.evaluate(() => sessionStorage.getItem('thinclone.token') === null), 'the expired token is forgotten');

  // Remove the clone, with confirmation; then the image can go.
  await go(page, '#/clones/dev1', 'clone');
  await page.click('button:has-text("Remove")');
  await page.waitForSelector('dialog#confirm[open]');
  await page.click('#confirm-ok');
  await rendered(page, 'clones');
  // (waitForFunction would evaluate a string, which the page's policy forbids.)
  await page.locator('#clone-list a', { hasText: /^dev1$/ }).waitFor({ state: 'detached', timeout: LONG });

  // Sign out: the token is forgotten and every page asks to sign in.
  await page.click('#sign-out');
  await rendered(page, 'sign-in');
  check(await page.evaluate(() => sessionStorage.getItem('thinclone.token') === null), 'signing out forgets the token');
  await page.evaluate(() => (location.hash = '#/clones'));
  await page.waitForTimeout(300);
  check(await page.locator('#token').isVisible(), 'after signing out, a page asks to sign in');

  // The first render of each page, with the catalog as it is now.
  await signIn(page, env('TOKEN_MAKER'));
  await measure(page, PAGES);
}

async function render() {
  const { page } = await session('render');
  await signIn(page, env('TOKEN_MAKER'));
  await measure(page, PAGES);
  await page.goto(`${BASE}/#/clones`);
  await rendered(page, 'clones', LONG);
  const first = await page.locator('#clone-list tbody tr th a').first().textContent();
  await measure(page, [[`#/clones/${first}`, 'clone']]);
}

try {
  if (MODE === 'render') await render();
  else await flow();
  check(consoleErrors.length === 0, `errors in the browser's console:\n${consoleErrors.join('\n')}`);
  console.log('dashboard: ok');
} catch (e) {
  console.error(e.stack || String(e));
  if (consoleErrors.length) console.error(`console errors:\n${consoleErrors.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
