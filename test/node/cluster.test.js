// Two `buildbridge serve` nodes on one PostgreSQL and one NATS: a pusher-js
// subscriber connected to node A sees every transition, once, of the
// builds triggered through node B (and through A), whichever node's runner
// ran them (ordered by seq: arrival order across nodes is not guaranteed);
// presence members who join and leave on B are seen on A. Needs
// BUILDBRIDGE_TEST_POSTGRES and BUILDBRIDGE_TEST_NATS (make test sets them
// when the services answer); skipped otherwise.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Hub, cli, tempDir, freePort, makeRepo, connect, subscribe, until } from './harness.js';

const pg = process.env.BUILDBRIDGE_TEST_POSTGRES;
const nats = process.env.BUILDBRIDGE_TEST_NATS;
const skip = !pg || !nats ? 'BUILDBRIDGE_TEST_POSTGRES and BUILDBRIDGE_TEST_NATS are not both set' : false;

let a, b, repo, token, rootToken, schema, dsn;

function psql(sql) {
  execFileSync('psql', [pg, '-v', 'ON_ERROR_STOP=1', '-qc', sql], { encoding: 'utf8' });
}

before(async () => {
  if (skip) return;
  // A schema of its own, as the Go tests' storetest does.
  schema = 'bbnode_' + randomBytes(6).toString('hex');
  psql(`CREATE SCHEMA ${schema}`);
  dsn = pg + (pg.includes('?') ? '&' : '?') + 'search_path=' + schema;
  const ns = 'bbnode' + randomBytes(4).toString('hex');
  // The nodes are one Pusher app: same id, key and secret everywhere.
  const args = ['--postgres', dsn, '--nats-url', nats, '--nats-namespace', ns,
    '--realtime-app-id', 'cluster', '--realtime-key', 'cluster-key', '--realtime-secret', randomBytes(16).toString('hex')];
  const dataA = tempDir(), dataB = tempDir();
  token = cli('user', 'add', 'ann', '--data', dataA, '--postgres', dsn);
  rootToken = cli('user', 'add', 'root', '--admin', '--data', dataA, '--postgres', dsn);
  a = await new Hub(dataA, await freePort(), args).start();
  b = await new Hub(dataB, await freePort(), args).start();
  repo = makeRepo('steps:\n  - name: test\n    run: echo testing; sleep 0.2\n');
  await a.client(token).must(201, 'POST', '/api/v1/projects', { name: 'app', repo: repo.bare });
});

after(async () => {
  await a?.stop();
  await b?.stop();
  repo?.cleanup();
  if (schema) psql(`DROP SCHEMA ${schema} CASCADE`);
});

test('a subscriber on node A sees every transition of builds triggered through node B, once each, in seq order', { skip }, async () => {
  const info = await a.client(token).must(200, 'GET', '/api/v1/user/channel');
  assert.equal(info.ws_port, a.port);
  const p = await connect(a.base, token, info);
  try {
    const ch = await subscribe(p, info.channel);
    const events = [];
    ch.bind('build-state-changed', (d) => events.push(d));
    const ids = [];
    for (const node of [b, a, b, a]) {
      ids.push((await node.client(token).must(201, 'POST', '/api/v1/projects/app/builds', { branch: 'main' })).id);
    }
    await until('every build FINISHED on A',
      () => ids.every((id) => events.some((e) => e.build.id === id && e.build.state === 'FINISHED')), 60000);
    for (const id of ids) {
      // Each transition once. Across nodes the arrival order of one
      // build's events is not guaranteed (two nodes may turn and deliver
      // its transitions at the same time); seq gives the order, as the
      // dashboard uses it.
      const mine = events.filter((e) => e.build.id === id).sort((x, y) => x.seq - y.seq);
      assert.deepEqual(mine.map((e) => e.build.state), ['QUEUED', 'STARTED', 'FINISHED'], `build ${id}`);
      assert.equal(mine[2].build.result, 'passed');
    }
  } finally {
    p.disconnect();
  }
});

test('presence holds across nodes: members who join and leave on B are seen on A', { skip }, async () => {
  const infoA = await a.client(token).must(200, 'GET', '/api/v1/user/channel');
  const infoR = await b.client(rootToken).must(200, 'GET', '/api/v1/user/channel');
  assert.equal(infoR.ws_port, b.port);
  const pa = await connect(a.base, token, infoA);
  const pr = await connect(b.base, rootToken, infoR);
  try {
    const chA = await subscribe(pa, 'presence-project-app');
    const added = [], removed = [];
    chA.bind('pusher:member_added', (m) => added.push(m));
    chA.bind('pusher:member_removed', (m) => removed.push(m));
    const chR = await subscribe(pr, 'presence-project-app');
    await until('member_added on A for the member who joined on B', () => added.length === 1, 10000);
    assert.equal(added[0].info.name, 'root');
    await until('ann (on A) listed on B', () => chR.members.count === 2, 10000);
    assert.equal(chA.members.count, 2);
    pr.disconnect();
    await until('member_removed on A', () => removed.length === 1, 10000);
    assert.equal(removed[0].info.name, 'root');
  } finally {
    pa.disconnect();
    pr.disconnect();
  }
});
