// The official pusher-js client against a real `buildbridge serve`: a
// user sees their own API usage live (api-usage events while they use the
// API, none while they are idle), and admins, only admins, see the whole
// hub on private-system.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, cli, tempDir, freePort, sleep, connect, subscribe, until } from './harness.js';

const interval = 400; // ms: usage.api_usage_interval and usage.system_interval
const limit = 100;
let hub, ann, admin, annToken, adminToken, annID;

before(async () => {
  const data = tempDir();
  adminToken = cli('user', 'add', 'root', '--admin', '--data', data);
  annToken = cli('user', 'add', 'ann', '--data', data);
  hub = await new Hub(data, await freePort(), [
    '--usage-api-usage-interval', `${interval}ms`, '--usage-system-interval', `${interval}ms`,
    '--usage-rate-limit', String(limit), '--usage-rate-window', '1h',
  ]).start();
  ann = hub.client(annToken);
  admin = hub.client(adminToken);
  annID = (await ann.must(200, 'GET', '/api/v1/user')).id;
});

after(async () => {
  await hub?.stop();
});

const sum = (events, key) => events.reduce((n, e) => n + e.data[key], 0);

test('api-usage arrives with the counts of a burst of requests, and nothing while idle', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel'); // 2nd request in this window
  const p = await connect(hub.base, annToken, info);
  try {
    const ch = await subscribe(p, info.channel);
    const events = [];
    ch.bind('api-usage', (e) => events.push(e));
    // The channel-info request is reported within an interval…
    await until('the first api-usage event', () => sum(events, 'requests') >= 1);
    // …then, idle: nothing, for several intervals.
    const settled = events.length;
    await sleep(4 * interval);
    assert.equal(events.length, settled, `api-usage events while idle: ${JSON.stringify(events.slice(settled))}`);

    // A burst: 6 answered, 2 not found.
    for (let i = 0; i < 6; i++) await ann.must(200, 'GET', '/api/v1/projects');
    for (let i = 0; i < 2; i++) await ann.must(404, 'GET', '/api/v1/builds/999999');
    const burst = () => events.slice(settled);
    await until('the burst in api-usage events', () => sum(burst(), 'requests') >= 8);
    await sleep(2 * interval);
    const got = burst();
    assert.equal(sum(got, 'requests'), 8);
    assert.equal(sum(got, 'errors'), 2);
    const last = got.at(-1);
    assert.equal(last.type, 'api-usage');
    assert.equal(last.data.user_id, annID);
    assert.equal(last.data.user, 'ann');
    assert.equal(last.data.limit, limit);
    // 1 (GET /user in before) + 1 (channel info) + 8, in one window.
    assert.equal(last.data.remaining, limit - 10);
    assert.ok(last.data.reset > 0 && last.data.reset <= 3600);
    assert.ok(Math.abs(last.data.interval_seconds - interval / 1000) < 1e-9);
    const routes = Object.fromEntries(got.flatMap((e) => e.data.routes).map((r) => [r.route, 0]));
    for (const e of got) for (const r of e.data.routes) routes[r.route] += r.requests;
    assert.deepEqual(routes, { 'GET /api/v1/projects': 6, 'GET /api/v1/builds/:id': 2 });

    // Idle again: nothing more.
    const after = events.length;
    await sleep(4 * interval);
    assert.equal(events.length, after, 'api-usage events after the burst, while idle');
  } finally {
    p.disconnect();
  }
});

test('private-system: refused to a non-admin, figures every few seconds for an admin', async () => {
  const annInfo = await ann.must(200, 'GET', '/api/v1/user/channel');
  const a = await connect(hub.base, annToken, annInfo);
  try {
    await assert.rejects(subscribe(a, 'private-system'), (err) => err.detail?.status === 403);
    const r = await fetch(hub.base + annInfo.auth_endpoint, {
      method: 'POST',
      headers: { Authorization: `Bearer ${annToken}`, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ socket_id: a.connection.socket_id, channel_name: 'private-system' }),
    });
    assert.equal(r.status, 403);
    assert.match((await r.json()).error.message, /only admins/);
  } finally {
    a.disconnect();
  }

  const info = await admin.must(200, 'GET', '/api/v1/user/channel');
  const p = await connect(hub.base, adminToken, info);
  try {
    const ch = await subscribe(p, 'private-system');
    const figures = [];
    ch.bind('system-figures', (f) => figures.push(f));
    await until('figures', () => figures.length >= 1);
    const start = figures.length;
    for (let i = 0; i < 5; i++) await ann.must(200, 'GET', '/api/v1/user');
    await ann.must(404, 'GET', '/api/v1/builds/999999');
    await until('figures with the requests', () => figures.slice(start).reduce((n, f) => n + f.requests, 0) >= 6);
    const f = figures.at(-1);
    for (const k of ['interval_seconds', 'requests', 'request_rate', 'errors', 'error_rate', 'client_errors', 'client_error_rate',
      'rate_limited', 'latency_p50_ms', 'latency_p95_ms', 'latency_p99_ms', 'latency_max_ms', 'active_users',
      'builds_per_minute', 'builds_running', 'queue_depth', 'delivery_failures', 'delivery_failures_per_minute',
      'delivery_backlog', 'connections']) {
      assert.equal(typeof f[k], 'number', `figure ${k}: ${JSON.stringify(f)}`);
    }
    assert.ok(Math.abs(f.interval_seconds - interval / 1000) < 0.2, `interval ${f.interval_seconds}`);
    assert.ok(figures.slice(start).reduce((n, x) => n + x.client_errors, 0) >= 1);
    assert.ok(figures.slice(start).some((x) => x.requests > 0 && x.latency_p50_ms > 0 && x.request_rate > 0 && x.active_users >= 1));
    assert.ok(f.connections >= 1);
  } finally {
    p.disconnect();
  }
});
