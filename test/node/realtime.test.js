// The official pusher-js client against a real `buildbridge serve`:
// channel info, auth with the Bearer token, live build events, another
// user's channel refused, the open-channel limit, presence, client
// events, reconnection after a restart, an encrypted channel.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import nacl from 'tweetnacl';
import { Hub, cli, tempDir, freePort, makeRepo, readData, sleep, connect, subscribe, until } from './harness.js';

let hub, ann, bob, admin, repo, annToken, bobToken, adminToken, data;

before(async () => {
  data = tempDir();
  adminToken = cli('user', 'add', 'root', '--admin', '--data', data);
  annToken = cli('user', 'add', 'ann', '--data', data);
  bobToken = cli('user', 'add', 'bob', '--data', data);
  hub = await new Hub(data, await freePort(), ['--realtime-max-channels', '3', '--realtime-client-events', 'true']).start();
  ann = hub.client(annToken);
  bob = hub.client(bobToken);
  admin = hub.client(adminToken);
  repo = makeRepo('steps:\n  - name: test\n    run: echo testing; sleep 0.3\n');
  await ann.must(201, 'POST', '/api/v1/projects', { name: 'app', repo: repo.bare });
});

after(async () => {
  await hub?.stop();
  repo?.cleanup();
});

function collect(ch, event) {
  const got = [];
  ch.bind(event, (d) => got.push(d));
  return got;
}

test('channel info names the caller\'s channel and how to reach the server', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel');
  assert.match(info.channel, /^private-user-\d+$/);
  assert.equal(info.auth_endpoint, '/user/channel/auth');
  assert.equal(info.ws_port, hub.port);
  assert.equal(info.max_channels, 3);
  assert.ok(info.key);
});

test('build-state-changed arrives QUEUED, STARTED, FINISHED for a build triggered through the API', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel');
  const p = await connect(hub.base, annToken, info);
  try {
    const ch = await subscribe(p, info.channel);
    const events = collect(ch, 'build-state-changed');
    const b = await ann.must(201, 'POST', '/api/v1/projects/app/builds', { branch: 'main' });
    await until('FINISHED', () => events.some((e) => e.build.id === b.id && e.build.state === 'FINISHED'));
    const mine = events.filter((e) => e.build.id === b.id);
    assert.deepEqual(mine.map((e) => e.build.state), ['QUEUED', 'STARTED', 'FINISHED']);
    assert.equal(mine[2].build.result, 'passed');
    assert.equal(mine[2].build.success, true);
    assert.equal(mine[2].type, 'build-state-changed');
    assert.ok(mine[0].seq < mine[1].seq && mine[1].seq < mine[2].seq);
  } finally {
    p.disconnect();
  }
});

test('another user\'s channel is refused by the auth endpoint', async () => {
  const annInfo = await ann.must(200, 'GET', '/api/v1/user/channel');
  const bobInfo = await bob.must(200, 'GET', '/api/v1/user/channel');
  const p = await connect(hub.base, bobToken, bobInfo);
  try {
    await assert.rejects(subscribe(p, annInfo.channel), (err) => err.detail?.status === 403);
    // And nothing leaks: bob still gets his own channel.
    await subscribe(p, bobInfo.channel);
  } finally {
    p.disconnect();
  }
});

test('the open-channel limit is enforced across connections and freed on disconnect', async () => {
  let info = await ann.must(200, 'GET', '/api/v1/user/channel');
  for (let i = 0; i < 100 && info.open_channels > 0; i++) {
    await sleep(50); // sockets of earlier tests are still closing
    info = await ann.must(200, 'GET', '/api/v1/user/channel');
  }
  assert.equal(info.open_channels, 0);
  const a = await connect(hub.base, annToken, info);
  const b = await connect(hub.base, annToken, info);
  try {
    await subscribe(a, info.channel);
    await subscribe(a, info.encrypted_channel);
    await subscribe(b, 'presence-project-app');
    await assert.rejects(subscribe(b, info.channel), (err) => err.detail?.status === 403);
    // pusher-js reports only the status; the endpoint's answer says why.
    const socketId = b.connection.socket_id;
    const r = await fetch(hub.base + info.auth_endpoint, {
      method: 'POST',
      headers: { Authorization: `Bearer ${annToken}`, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ socket_id: socketId, channel_name: info.channel }),
    });
    assert.equal(r.status, 403);
    assert.match((await r.json()).error.message, /limit reached: you have 3 of 3 channels open/);
    const before = (await ann.must(200, 'GET', '/api/v1/user/channel')).open_channels;
    assert.equal(before, 3);
    a.disconnect();
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      try { await subscribe(b, info.channel); ok = true; } catch { await sleep(100); }
    }
    assert.ok(ok, 'subscription still refused after the other socket closed');
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test('presence members join and leave', async () => {
  const annInfo = await ann.must(200, 'GET', '/api/v1/user/channel');
  const adminInfo = await admin.must(200, 'GET', '/api/v1/user/channel');
  const a = await connect(hub.base, annToken, annInfo);
  const r = await connect(hub.base, adminToken, adminInfo);
  try {
    const ch = await subscribe(a, 'presence-project-app');
    const added = [], removed = [];
    ch.bind('pusher:member_added', (m) => added.push(m));
    ch.bind('pusher:member_removed', (m) => removed.push(m));
    const ch2 = await subscribe(r, 'presence-project-app');
    await until('member_added', () => added.length === 1);
    assert.equal(added[0].info.name, 'root');
    assert.equal(ch2.members.count, 2);
    r.disconnect();
    await until('member_removed', () => removed.length === 1);
  } finally {
    a.disconnect();
    r.disconnect();
  }
});

test('client events reach other members and are not echoed', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel');
  const a = await connect(hub.base, annToken, info);
  const b = await connect(hub.base, annToken, info);
  try {
    const cha = await subscribe(a, 'presence-project-app');
    const chb = await subscribe(b, 'presence-project-app');
    const atA = collect(cha, 'client-hello');
    const atB = collect(chb, 'client-hello');
    assert.ok(cha.trigger('client-hello', { n: 1 }));
    await until('client event at b', () => atB.length === 1);
    assert.deepEqual(atB[0], { n: 1 });
    await sleep(200);
    assert.equal(atA.length, 0, 'the sender got its own client event');
  } finally {
    a.disconnect();
    b.disconnect();
  }
});

test('an encrypted channel is decrypted by pusher-js', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel');
  const p = await connect(hub.base, annToken, info);
  try {
    const ch = await subscribe(p, info.encrypted_channel);
    const got = collect(ch, 'secret-news');
    // Publish through the Pusher HTTP API, encrypted as a Pusher server
    // library does, so only a client holding the shared secret reads it.
    const master = Buffer.from(readData(data, 'realtime.master_key'), 'base64');
    const shared = createHash('sha256').update(Buffer.concat([Buffer.from(info.encrypted_channel), master])).digest();
    const nonce = nacl.randomBytes(24);
    const box = nacl.secretbox(Buffer.from(JSON.stringify({ hello: 'world' })), nonce, new Uint8Array(shared));
    const payload = JSON.stringify({ nonce: Buffer.from(nonce).toString('base64'), ciphertext: Buffer.from(box).toString('base64') });
    await signedPost('/apps/buildbridge/events', { name: 'secret-news', channels: [info.encrypted_channel], data: payload });
    await until('decrypted event', () => got.length === 1);
    assert.deepEqual(got[0], { hello: 'world' });
  } finally {
    p.disconnect();
  }
});

// signedPost calls the Pusher HTTP API with Pusher's request signing.
async function signedPost(path, body) {
  const raw = JSON.stringify(body);
  const secret = readData(data, 'realtime.secret');
  const params = new URLSearchParams({
    auth_key: 'buildbridge',
    auth_timestamp: String(Math.floor(Date.now() / 1000)),
    auth_version: '1.0',
    body_md5: createHash('md5').update(raw).digest('hex'),
  });
  const sorted = [...params.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${k}=${v}`).join('&');
  const sig = createHmac('sha256', secret).update(`POST\n${path}\n${sorted}`).digest('hex');
  const r = await fetch(`${hub.base}${path}?${sorted}&auth_signature=${sig}`, { method: 'POST', body: raw, headers: { 'Content-Type': 'application/json' } });
  assert.equal(r.status, 200, await r.text());
}

test('pusher-js reconnects after the server restarts and events flow again', async () => {
  const info = await ann.must(200, 'GET', '/api/v1/user/channel');
  const p = await connect(hub.base, annToken, info);
  try {
    const ch = await subscribe(p, info.channel);
    const events = collect(ch, 'build-state-changed');
    let resubscribed = 0;
    ch.bind('pusher:subscription_succeeded', () => resubscribed++);
    await hub.stop();
    await hub.start();
    await until('resubscribed', () => resubscribed >= 1 && p.connection.state === 'connected', 30000);
    const b = await ann.must(201, 'POST', '/api/v1/projects/app/builds', {});
    await until('FINISHED after restart', () => events.some((e) => e.build.id === b.id && e.build.state === 'FINISHED'), 30000);
  } finally {
    p.disconnect();
  }
});
