// The dashboard in Debian's Chromium (driven by playwright-core) against a
// real `buildbridge serve`: sign-in, live rows QUEUED → STARTED → FINISHED
// with no reload, the live log, Rebuild, broken and fixed (title, favicon,
// notification), no polling over 30 idle seconds, a reconnect that fetches
// once, CSRF refusal, sign-out, the phone layout. Screenshots go to
// test-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { Hub, cli, tempDir, freePort, makeRepo, sleep } from './harness.js';

const here = dirname(fileURLToPath(import.meta.url));
const artifacts = resolve(here, '../../test-artifacts');
const chromiumPath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

let hub, data, port, token, api, repo, flagDir, context, page, userDir;

// Every HTTP request the page makes, with the time it was made.
const requests = [];

before(async () => {
  if (!existsSync(chromiumPath)) {
    throw new Error(`Chromium is missing at ${chromiumPath}: run \`make test-node\` as root (scripts/chromium.sh installs Debian's chromium) or set CHROMIUM_BIN`);
  }
  mkdirSync(artifacts, { recursive: true });
  data = tempDir();
  token = cli('user', 'add', 'dana', '--data', data);
  port = await freePort();
  hub = await new Hub(data, port, ['--concurrency', '1']).start();
  api = hub.client(token);
  flagDir = tempDir('bb-flag-');
  // The build fails while the flag file exists: the test breaks and fixes
  // the branch without new commits.
  repo = makeRepo([
    'steps:',
    '  - name: prepare',
    '    run: echo preparing the build',
    '  - name: test',
    `    run: echo start of test; sleep 1.5; echo hello-from-the-build; if [ -e ${flagDir}/fail ]; then echo tests failed; exit 1; fi; sleep 0.5; mkdir -p out; echo result > out/report.txt`,
    'artifacts: ["out/**"]',
    '',
  ].join('\n'));
  await api.must(201, 'POST', '/api/v1/projects', { name: 'webapp', repo: repo.bare });

  userDir = tempDir('bb-chromium-');
  context = await chromium.launchPersistentContext(userDir, {
    executablePath: chromiumPath,
    headless: true,
    args: flags,
    viewport: { width: 1280, height: 800 },
  });
  await context.grantPermissions(['notifications'], { origin: hub.base });
  // Instrumentation: every state a build row or page shows, in order, and
  // every notification made.
  await context.addInitScript(() => {
    window.__seen = [];
    window.__notes = [];
    const record = (el) => {
      const id = el.dataset.buildId;
      const st = el.dataset.state;
      if (!id || !st) return;
      const last = window.__seen.filter((s) => s.id === id).pop();
      if (!last || last.state !== st) window.__seen.push({ id, state: st, status: el.dataset.status });
    };
    new MutationObserver((muts) => {
      for (const m of muts) {
        if (m.type === 'attributes') record(m.target);
        for (const n of m.addedNodes || []) {
          if (n.nodeType !== 1) continue;
          if (n.dataset?.buildId) record(n);
          n.querySelectorAll?.('[data-build-id]').forEach(record);
        }
      }
    }).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
    const Real = window.Notification;
    if (Real) {
      window.Notification = class extends Real {
        constructor(title, opts) {
          super(title, opts);
          window.__notes.push(title);
        }
      };
      Object.defineProperty(window.Notification, 'permission', { get: () => Real.permission });
      window.Notification.requestPermission = (...a) => Real.requestPermission(...a);
    }
  });
  page = context.pages()[0] || await context.newPage();
  page.on('request', (r) => requests.push({ t: Date.now(), url: r.url(), method: r.method(), type: r.resourceType() }));
  page.on('pageerror', (err) => console.error('page error:', err));
});

after(async () => {
  await context?.close();
  await hub?.stop();
  repo?.cleanup();
  for (const d of [userDir, flagDir]) if (d) rmSync(d, { recursive: true, force: true });
});

async function shot(name) {
  await page.screenshot({ path: join(artifacts, name), fullPage: true });
}

async function seen(id) {
  return page.evaluate((id) => window.__seen.filter((s) => s.id === String(id)).map((s) => s.state), id);
}

test('sign-in exchanges the token for an HttpOnly, SameSite session cookie', async () => {
  await page.goto(hub.base + '/');
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await page.getByLabel('API token').fill('bb_not_a_real_token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That token is not valid or was revoked.').waitFor();

  await page.getByLabel('API token').fill(token);
  await page.keyboard.press('Enter');
  await page.locator('section.project[data-project="webapp"]').waitFor();
  assert.equal(new URL(page.url()).pathname, '/');
  const cookies = await context.cookies(hub.base);
  const c = cookies.find((x) => x.name === 'bb_session');
  assert.ok(c, `no session cookie in ${JSON.stringify(cookies)}`);
  assert.equal(c.httpOnly, true);
  assert.equal(c.sameSite, 'Lax');
  assert.notEqual(c.value, token, 'the cookie is the API token');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie is readable by script');
  await page.evaluate(() => { window.__noReload = 'still here'; });
});

test('a build triggered through the API goes QUEUED → STARTED → FINISHED on the page without reloading', async () => {
  const b = await api.must(201, 'POST', '/api/v1/projects/webapp/builds', { branch: 'main' });
  const row = page.locator(`li.build[data-build-id="${b.id}"]`);
  await row.waitFor({ timeout: 15000 });
  await page.locator(`li.build[data-build-id="${b.id}"][data-state="FINISHED"]`).waitFor({ timeout: 30000 });
  assert.deepEqual(await seen(b.id), ['QUEUED', 'STARTED', 'FINISHED']);
  assert.equal(await row.getAttribute('data-status'), 'passed');
  assert.equal((await row.locator('.pill').textContent()).trim(), 'passed');
  assert.equal((await row.locator('.branch').textContent()).trim(), 'main');
  assert.equal((await row.locator('.sha').textContent()).trim(), b.sha.slice(0, 8));
  assert.equal((await row.locator('.msg').textContent()).trim(), 'first commit');
  assert.equal((await row.locator('.author').textContent()).trim(), 'Ann Author');
  assert.match((await row.locator('.dur').textContent()).trim(), /^\d+s$/);
  assert.equal(await page.evaluate(() => window.__noReload), 'still here');
  await shot('dashboard.png');
});

test('the build page shows the live log and steps; Rebuild queues a new build', async () => {
  const first = await page.locator('li.build').first().getAttribute('data-build-id');
  // Keyboard: the row is a link reached with Tab and opened with Enter.
  await page.locator(`li.build[data-build-id="${first}"] a.row`).focus();
  await page.keyboard.press('Enter');
  await page.waitForURL(`**/builds/${first}`);
  await page.locator('pre.log', { hasText: /\nhello-from-the-build\n/ }).waitFor();
  await page.locator('ul.artifacts a', { hasText: 'out/report.txt' }).waitFor();

  await page.getByRole('button', { name: 'Rebuild' }).click();
  await page.waitForURL((u) => /\/builds\/\d+$/.test(u.pathname) && !u.pathname.endsWith(`/${first}`));
  const second = Number(new URL(page.url()).pathname.split('/').pop());
  assert.ok(second > Number(first));
  // The log arrives in pieces while the build runs.
  await page.locator('pre.log', { hasText: /\nstart of test\n/ }).waitFor({ timeout: 20000 });
  assert.equal(await page.locator('article.build-page').getAttribute('data-state'), 'STARTED');
  assert.doesNotMatch(await page.locator('pre.log').textContent(), /\nhello-from-the-build\n/, 'the log came in one piece, not live');
  await page.locator('pre.log', { hasText: /\nhello-from-the-build\n/ }).waitFor({ timeout: 20000 });
  await page.locator('article.build-page[data-state="FINISHED"]').waitFor({ timeout: 20000 });
  const log = await page.locator('pre.log').textContent();
  // The line the step printed (not the echoed command) appears once.
  assert.equal(log.split('\nhello-from-the-build\n').length, 2, `output shown twice or not at all:\n${log}`);
  assert.deepEqual(await page.locator('ol.steps li span:not(.pill)').allTextContents(), ['prepare', 'test']);
  const server = await (await fetch(`${hub.base}/api/v1/builds/${second}/log`, { headers: { Authorization: `Bearer ${token}` } })).text();
  assert.equal(log, server, 'the live log differs from the stored one');
  const states = await seen(second);
  assert.ok(['QUEUED,STARTED,FINISHED', 'STARTED,FINISHED'].includes(states.join()), `build page states ${states}`);
  assert.equal(await page.evaluate(() => window.__noReload), 'still here');
  await shot('build-page.png');
});

test('a failing build shows as broken (title, favicon, notification), the next passing one as fixed', async () => {
  await page.goto(hub.base + '/'); // a fresh load: the snapshot path, and the toggle below
  await page.locator('section.project[data-project="webapp"] li.build').first().waitFor();
  await page.evaluate(() => { localStorage.removeItem('buildbridge.notify'); });
  await page.getByRole('button', { name: 'Notify me' }).click();
  await page.getByRole('button', { name: 'Notifications on' }).waitFor();

  writeFileSync(join(flagDir, 'fail'), '');
  const bad = await api.must(201, 'POST', '/api/v1/projects/webapp/builds', {});
  await page.locator(`li.build[data-build-id="${bad.id}"][data-state="FINISHED"]`).waitFor({ timeout: 30000 });
  assert.equal(await page.locator(`li.build[data-build-id="${bad.id}"]`).getAttribute('data-status'), 'broken');
  await page.waitForFunction(() => document.title.startsWith('✖ 1 failing'));
  assert.equal(await page.locator('link[rel="icon"]').getAttribute('data-tone'), 'bad');
  await page.waitForFunction(() => window.__notes.some((t) => /webapp #\d+ broken/.test(t)));
  await shot('broken.png');

  rmSync(join(flagDir, 'fail'));
  const good = await api.must(201, 'POST', '/api/v1/projects/webapp/builds', {});
  await page.locator(`li.build[data-build-id="${good.id}"][data-state="FINISHED"]`).waitFor({ timeout: 30000 });
  assert.equal(await page.locator(`li.build[data-build-id="${good.id}"]`).getAttribute('data-status'), 'fixed');
  await page.waitForFunction(() => !document.title.includes('failing'));
  assert.equal(await page.locator('link[rel="icon"]').getAttribute('data-tone'), 'ok');
  await page.waitForFunction(() => window.__notes.some((t) => /webapp #\d+ fixed/.test(t)));
});

test('no polling: over 30 idle seconds the page sends no HTTP request', async () => {
  await sleep(1000); // let the last build's artifact fetch settle
  const from = Date.now();
  await sleep(30000);
  const during = requests.filter((r) => r.t >= from);
  assert.deepEqual(during, [], 'the page made HTTP requests while idle');
  // And it is still live: the next build shows up without any request for it.
  const b = await api.must(201, 'POST', '/api/v1/projects/webapp/builds', {});
  await page.locator(`li.build[data-build-id="${b.id}"][data-state="FINISHED"]`).waitFor({ timeout: 30000 });
  const forState = requests.filter((r) => r.t >= from && r.url.includes('/api/'));
  assert.deepEqual(forState.filter((r) => !r.url.includes('/artifacts')), [], 'build state was fetched instead of pushed');
});

test('after the server restarts, the page reconnects and fetches once, missing nothing', async () => {
  await hub.stop();
  await page.locator('#conn', { hasText: 'reconnecting' }).waitFor({ timeout: 20000 });
  hub = await new Hub(data, port, ['--concurrency', '1']).start();
  const from = Date.now();
  // A build that happens before the page is back: its events are missed
  // and the sync after the reconnect shows it.
  const b = await api.must(201, 'POST', '/api/v1/projects/webapp/builds', {});
  await page.locator(`li.build[data-build-id="${b.id}"][data-state="FINISHED"]`).waitFor({ timeout: 60000 });
  await page.locator('#conn:empty').waitFor();
  const lists = requests.filter((r) => r.t >= from && new URL(r.url).pathname === '/api/v1/projects');
  assert.equal(lists.length, 1, `the project list was fetched ${lists.length} times after the reconnect`);
});

test('state-changing calls with the cookie need the CSRF token', async () => {
  const res = await page.evaluate(async () => {
    const r = await fetch('/api/v1/projects/webapp/builds', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
    return { status: r.status, body: await r.json() };
  });
  assert.equal(res.status, 403);
  assert.equal(res.body.error.code, 'csrf_failed');
  const ok = await page.evaluate(async () => (await fetch('/api/v1/user')).status);
  assert.equal(ok, 200);
});

test('on a phone the page fits the screen and rows keep one height', async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(hub.base + '/');
  await page.locator('li.build').first().waitFor();
  const { overflow, heights } = await page.evaluate(() => ({
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    heights: [...document.querySelectorAll('li.build a.row')].map((r) => r.getBoundingClientRect().height),
  }));
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  assert.equal(new Set(heights).size, 1, `rows of different heights: ${heights}`);
  await shot('dashboard-phone.png');
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('the deliveries page lists failed deliveries when the server has the delivery API', async () => {
  const has = (await api.call('GET', '/api/v1/deliveries?status=failed')).status === 200;
  await page.goto(hub.base + '/');
  await page.locator('li.build').first().waitFor();
  assert.equal(await page.getByRole('link', { name: 'Deliveries' }).count(), has ? 1 : 0);
  if (!has) return;
  await page.getByRole('link', { name: 'Deliveries' }).click();
  await page.getByRole('heading', { name: 'Failed deliveries' }).waitFor();
  await page.locator('ul.deliveries > li').first().waitFor();
  const { deliveries } = await api.must(200, 'GET', '/api/v1/deliveries?status=failed');
  assert.equal(await page.locator('li.delivery').count(), deliveries.length);
  await page.getByRole('link', { name: 'Builds' }).click();
  await page.locator('li.build').first().waitFor();
});

test('sign-out ends the session on the server', async () => {
  const cookie = (await context.cookies(hub.base)).find((x) => x.name === 'bb_session');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  assert.equal((await context.cookies(hub.base)).find((x) => x.name === 'bb_session'), undefined);
  const r = await fetch(`${hub.base}/api/v1/user`, { headers: { Cookie: `bb_session=${cookie.value}` } });
  assert.equal(r.status, 401);
});
